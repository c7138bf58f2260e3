"""What a live inspection run knows about itself, shared by the scoring loop, the status line and the live page.

One `LiveStatus` per run. The scoring loop records every event, dropped frame
and source-health change; the terminal status line, `/status.json`, `/metrics`
and the live page only read snapshots. Thread-safe: the readers, the loop and
the HTTP server's threads touch it at once. Memory is bounded for runs of
weeks: latencies and frame times are kept in fixed-size rolling windows.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from winclip.runtime.line.defaults import OVERLAYS_KEPT

ROLLING = 256  # scored frames behind p50/p95 latency
FPS_WINDOW_S = 10.0  # FPS counts the frames scored in the last this-many seconds, so it falls when a source stops
HEALTH_STATES = ("starting", "ok", "reconnecting", "lost", "ended")
TOTALS = ("scored", "anomalous", "errors", "dropped")  # the run's counts, summed over its sources
DOWN = ("reconnecting", "lost")  # a source that should be sending and is not (an outage)


@dataclass
class SourceState:
    """One source as the page shows it: health, counts, its newest verdict and overlay."""

    health: str = "starting"
    detail: str = ""
    since: float = field(default_factory=time.time)  # when health last changed
    scored: int = 0
    anomalous: int = 0
    errors: int = 0
    dropped: int = 0
    losses: int = 0  # times it stopped delivering
    judged_by: str = ""  # how its frames are judged (object, profile version, threshold), for its card
    last_score: float | None = None
    last_anomalous: bool | None = None
    last_time: float | None = None  # capture time of the newest scored frame
    overlay_jpeg: bytes | None = None  # newest overlay, for the live page
    overlay_time: float | None = None  # capture time of the frame that overlay shows
    # the page's card is one snapshot: the overlay's sequence number names its picture, and the frame, score
    # and verdict are that picture's (not the newest frame's, which may be a moment newer)
    overlay_seq: int = 0
    overlay_frame: int | None = None
    overlay_score: float | None = None
    overlay_anomalous: bool | None = None
    overlay_threshold: float | None = None
    overlays: deque = field(default_factory=lambda: deque(maxlen=OVERLAYS_KEPT))  # (seq, jpeg), newest last


class LiveStatus:
    """A live run's counts, rolling latency and FPS, and each source's health: written by the loop, the
    readers and the sinks, read (as snapshots) by the status line, the live page and /metrics."""

    def __init__(self, sources: list[str] | None = None, rolling: int = ROLLING):
        self._lock = threading.Lock()
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self.sources: dict[str, SourceState] = {}
        self._latency_ms: deque[float] = deque(maxlen=rolling)
        self._scored_at: deque[float] = deque(maxlen=rolling)  # monotonic times, for FPS
        self.sink_errors: dict[str, int] = {}
        self._retired = dict.fromkeys(TOTALS, 0)  # the counts of sources that left the run
        self._sections: dict = {}  # name -> function: more of the run for the snapshot (the operator desk)
        for name in sources or []:
            self.sources[name] = SourceState()

    def _source(self, name: str) -> SourceState:
        state = self.sources.get(name)
        if state is None:
            state = self.sources[name] = SourceState()
        return state

    # --- writers (the scoring loop, the readers, the sinks)
    def add(self, name: str) -> None:
        """A source that joined the run (a camera added by a station's reload)."""
        with self._lock:
            self._source(name)

    def describe(self, name: str, judged_by: str) -> None:
        with self._lock:
            self._source(name).judged_by = judged_by

    def forget(self, name: str) -> None:
        """A source that left the run: its card and metrics go (a camera removed by a station's reload)."""
        with self._lock:
            gone = self.sources.pop(name, None)
            if gone is not None:  # the run's totals keep what it did
                for key in TOTALS:
                    self._retired[key] += getattr(gone, key)

    def record_event(self, event: dict) -> None:
        """Count one event as `frame_event` builds it: a decision or an error."""
        with self._lock:
            state = self._source(str(event.get("source", "?")))
            if "error" in event:
                state.errors += 1
                return
            state.scored += 1
            state.anomalous += bool(event.get("anomalous"))
            state.last_score = event.get("image_score")
            state.last_anomalous = event.get("anomalous")
            state.last_time = event.get("time")
            total = (event.get("latency_ms") or {}).get("total")
            if total is not None:
                self._latency_ms.append(float(total))
            self._scored_at.append(time.monotonic())

    def record_drop(self, source: str, count: int = 1) -> None:
        with self._lock:
            self._source(source).dropped += count

    def set_health(self, source: str, health: str, detail: str = "") -> None:
        if health not in HEALTH_STATES:
            raise ValueError(f"health must be one of {HEALTH_STATES}, got {health!r}")
        with self._lock:
            state = self._source(source)
            if state.health != health:
                if health in DOWN and state.health == "ok":
                    state.losses += 1
                state.since = time.time()
            state.health, state.detail = health, detail

    def set_overlay(self, source: str, jpeg: bytes, captured: float | None = None, event: dict | None = None) -> None:
        """The newest overlay of a source, and (from its frame's event) what it shows: frame, score, verdict."""
        event = event or {}
        with self._lock:
            state = self._source(source)
            state.overlay_seq += 1
            state.overlay_jpeg, state.overlay_time = jpeg, captured
            state.overlay_frame, state.overlay_score = event.get("frame"), event.get("image_score")
            state.overlay_anomalous, state.overlay_threshold = event.get("anomalous"), event.get("threshold")
            state.overlays.append((state.overlay_seq, jpeg))

    def attach(self, name: str, section) -> None:
        """Add `name: section()` to every snapshot (a function of no arguments returning JSON-ready data)."""
        self._sections[name] = section

    def record_sink_error(self, sink: str) -> None:
        with self._lock:
            self.sink_errors[sink] = self.sink_errors.get(sink, 0) + 1

    # --- readers (status line, /status.json, /metrics, the live page)
    def overlay(self, source: str, seq: int | None = None) -> bytes | None:
        """The newest overlay of a source, or the one numbered `seq` while it is among the newest kept."""
        with self._lock:
            state = self.sources.get(source)
            if state is None or seq is None:
                return None if state is None else state.overlay_jpeg
            return next((jpeg for n, jpeg in state.overlays if n == seq), None)

    def snapshot(self) -> dict:
        """A JSON-ready copy: totals, rolling latency and FPS, and each source's state."""
        with self._lock:
            latencies = np.array(self._latency_ms, dtype=np.float64)
            stamps = list(self._scored_at)
            sources = {
                name: {k: v for k, v in vars(s).items() if k not in ("overlay_jpeg", "overlays")}
                | {"has_overlay": s.overlay_jpeg is not None}
                for name, s in self.sources.items()
            }
            sink_errors = dict(self.sink_errors)
            retired = dict(self._retired)
        now = time.monotonic()
        recent = sum(1 for t in stamps if now - t <= FPS_WINDOW_S)
        span = min(FPS_WINDOW_S, now - self._started_monotonic)
        fps = recent / span if span > 0 else 0.0
        return {
            "now": round(time.time(), 3),  # the run's clock: the page judges staleness by it, not by its own
            "uptime_s": round(time.time() - self.started, 3),
            "scored": sum(s["scored"] for s in sources.values()) + retired["scored"],
            "anomalous": sum(s["anomalous"] for s in sources.values()) + retired["anomalous"],
            "errors": sum(s["errors"] for s in sources.values()) + retired["errors"],
            "dropped": sum(s["dropped"] for s in sources.values()) + retired["dropped"],
            "latency_ms": {
                "p50": round(float(np.percentile(latencies, 50)), 3) if latencies.size else None,
                "p95": round(float(np.percentile(latencies, 95)), 3) if latencies.size else None,
                "window": int(latencies.size),
            },
            "fps": round(fps, 3),
            "sink_errors": sink_errors,
            "sources": sources,
            **{name: section() for name, section in list(self._sections.items())},
        }

    def status_line(self) -> str:
        """One line for a terminal: scored, dropped, anomalous, p50/p95, FPS."""
        snap = self.snapshot()
        lat = snap["latency_ms"]
        p50 = "-" if lat["p50"] is None else f"{lat['p50']:.0f}"
        p95 = "-" if lat["p95"] is None else f"{lat['p95']:.0f}"
        down = [n for n, s in snap["sources"].items() if s["health"] in DOWN]
        line = (f"scored {snap['scored']}  dropped {snap['dropped']}  anomalous {snap['anomalous']}  "
                f"errors {snap['errors']}  p50/p95 {p50}/{p95} ms  {snap['fps']:.2f} fps")
        return line + (f"  down: {', '.join(down)}" if down else "")
