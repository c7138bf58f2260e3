"""Drift alarms: the scores of frames judged normal, compared with the line profile's own normals.

Per source, the loop keeps the image scores of the last DRIFT_WINDOW frames it
judged normal and compares them, as a two-sample Kolmogorov-Smirnov test, with
the reference: the scores of the profile's held-out (and taught) normals under
its memory, as the profile records them. Without such a reference (no profile,
or one made before profiles kept it) the run's own first DRIFT_WINDOW normal
scores per source are the reference.

A drift episode starts when the KS distance reaches DRIFT_ALARM with p below
DRIFT_ALPHA (both: a large sample makes tiny, harmless shifts significant) and
ends when the distance falls to DRIFT_CLEAR or below: one `drift` event at the
start, one `drift_cleared` at the end, however long it lasts. A new profile
version (a taught part) gives a new reference and starts the windows afresh.

The test is on frames that are not independent draws (a line repeats itself),
which makes p optimistic; the distance floor is what keeps a stable line quiet.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from winclip.runtime.line import defaults


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_pvalue(distance: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS distance (Kolmogorov's distribution, Stephens' small-sample factor)."""
    effective = n * m / (n + m)
    lam = (math.sqrt(effective) + 0.12 + 0.11 / math.sqrt(effective)) * distance
    if lam < 1e-3:
        return 1.0
    total = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(max(total, 0.0), 1.0))


@dataclass
class SourceDrift:
    """One source's window of normal scores and where its drift episode stands."""

    window: deque
    baseline: list = field(default_factory=list)  # the run's own first normal scores, when there is no reference
    distance: float | None = None
    p: float | None = None
    drifting: bool = False
    since: float | None = None
    episodes: int = 0


class DriftWatch:
    """Compares each source's recent normal scores with a reference distribution; says when a drift starts and ends."""

    def __init__(self, reference: np.ndarray | None = None, window: int = defaults.DRIFT_WINDOW,
                 min_frames: int = defaults.DRIFT_MIN_FRAMES, alarm: float = defaults.DRIFT_ALARM,
                 clear: float = defaults.DRIFT_CLEAR, alpha: float = defaults.DRIFT_ALPHA):
        if not 0.0 < clear < alarm <= 1.0:
            raise ValueError(f"drift levels must satisfy 0 < clear < alarm <= 1, got {clear} and {alarm}")
        self.window, self.min_frames = window, min(min_frames, window)
        self.alarm, self.clear, self.alpha = alarm, clear, alpha
        self._lock = threading.Lock()
        self._sources: dict[str, SourceDrift] = {}
        self.reference: np.ndarray | None = None
        self.reset(reference)

    def reset(self, reference: np.ndarray | None) -> None:
        """A new reference (a new profile version): every window starts again; an open episode is closed quietly."""
        with self._lock:
            self.reference = None if reference is None or len(reference) < 2 else np.sort(np.asarray(reference, float))
            self._sources.clear()

    def observe(self, source: str, score: float, anomalous: bool | None) -> dict | None:
        """Take one scored frame; the `drift` or `drift_cleared` event to emit, if this frame starts or ends one."""
        if anomalous or score is None or not math.isfinite(score):
            return None
        with self._lock:
            state = self._sources.get(source)
            if state is None:
                state = self._sources[source] = SourceDrift(deque(maxlen=self.window))
            reference = self.reference
            if reference is None:  # the run's own first normal scores become the reference
                if len(state.baseline) < self.window:
                    state.baseline.append(float(score))
                    return None
                reference = np.asarray(state.baseline)
            state.window.append(float(score))
            if len(state.window) < self.min_frames:
                return None
            recent = np.fromiter(state.window, float)
            state.distance = ks_distance(recent, reference)
            state.p = ks_pvalue(state.distance, len(recent), len(reference))
            if not state.drifting and state.distance >= self.alarm and state.p < self.alpha:
                state.drifting, state.since = True, time.time()
                state.episodes += 1
                return self._event("drift", source, state, recent, reference)
            if state.drifting and state.distance <= self.clear:
                state.drifting = False
                event = self._event("drift_cleared", source, state, recent, reference)
                event["lasted_s"] = round(time.time() - state.since, 3)
                state.since = None
                return event
        return None

    def _event(self, kind: str, source: str, state: SourceDrift, recent: np.ndarray, reference: np.ndarray) -> dict:
        median, ref_median = float(np.median(recent)), float(np.median(reference))
        return {"event": kind, "time": round(time.time(), 3), "source": source,
                "ks_distance": round(state.distance, 4), "p_value": float(f"{state.p:.3g}"),
                "direction": "up" if median > ref_median else "down", "window": len(recent),
                "median_score": round(median, 6), "reference_median": round(ref_median, 6),
                "reference": "profile" if self.reference is not None else "run start",
                "reference_size": len(reference)}

    def state(self) -> dict:
        """Per source: the KS distance, p, whether drifting and since when (for the page and /metrics)."""
        with self._lock:
            return {source: {"distance": s.distance, "p": s.p, "drifting": s.drifting, "since": s.since,
                             "window": len(s.window), "episodes": s.episodes,
                             "reference": "profile" if self.reference is not None else "run start"}
                    for source, s in self._sources.items()}
