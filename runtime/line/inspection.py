"""The inspection driver shared by every source: batches of frames in, events out.

Per batch: one engine (a frame that breaks the batch is retried alone, so the
others still get scored; frames of several cameras share the engine and are
then judged each by its own camera's detector), then for each frame an event (a
decision or an error, never a NaN passed as a pass), its saved artefacts, and
the run's event fan-out.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from winclip.runtime.detector import FrameError, FrameResult
from winclip.runtime.line.fanout import EventFanout
from winclip.runtime.line.interfaces import BatchHook, EventWriter, FrameObserver, FrameScorer, ScorerOf

LATENCY_WINDOW = 100_000  # scored frames behind the summary's median


@dataclass
class Counts:
    """What a run has scored so far, for its summary line."""

    scored: int = 0
    errors: int = 0
    anomalous: int = 0
    # the newest latencies only: a live run of weeks must not grow (the median is then a rolling one)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def summary(self) -> str:
        median = f"{statistics.median(self.latencies_ms):.1f}" if self.latencies_ms else "-"
        return f"{self.scored} scored, {self.errors} errors, {self.anomalous} anomalous; median {median} ms/frame"


def score_each(score, frames: list) -> list:
    """score(frames) for a batch; when it raises FrameError the batch is split, so a frame that cannot be scored
    gets its FrameError and the others their results."""
    if not frames:
        return []
    try:
        return score(frames)
    except FrameError as exc:
        if len(frames) == 1:
            return [exc]
        return [r for frame in frames for r in score_each(score, [frame])]


class EngineScoring:
    """A batch through one engine session, each frame then judged by its own detector (object, memory, thresholds).

    `route(frame)` names the frame's detector; every detector shares `engine`'s
    session (Detector.sharing_engine), so frames of several cameras, each with
    its own part and profile, are embedded by one engine: in one call, or in
    calls of `max_batch` frames back to back (a live run on a CPU: one frame a
    call, Backend.live_batch says why).
    """

    def __init__(self, engine: FrameScorer, route: ScorerOf | None = None, max_batch: int | None = None):
        self.engine = engine
        self.route = route or (lambda frame: engine)
        self.max_batch = max_batch  # frames per engine call (None: the whole batch); calls run back to back

    def _embed(self, images: list) -> tuple[dict, dict]:
        step = self.max_batch or len(images)
        if step >= len(images):
            return self.engine.embed(images)
        parts = [self.engine.embed(images[i:i + step]) for i in range(0, len(images), step)]
        outputs = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
        return outputs, {stage: sum(p[1][stage] for p in parts) for stage in parts[0][1]}

    def __call__(self, frames: list) -> list[FrameResult]:
        try:
            outputs, times = self._embed([f.image for f in frames])
        except ValueError as exc:
            raise FrameError(str(exc)) from None
        groups: dict[int, list[int]] = {}
        detectors = {}
        for i, frame in enumerate(frames):
            detector = self.route(frame)
            detectors[id(detector)] = detector
            groups.setdefault(id(detector), []).append(i)
        results: list = [None] * len(frames)
        for key, rows in groups.items():
            share = {k: v * len(rows) / len(frames) for k, v in times.items()}  # per frame, as in one batch
            picked = outputs if len(rows) == len(frames) else {k: v[rows] for k, v in outputs.items()}
            judged = detectors[key].judge([frames[i].image for i in rows], picked, share)
            for i, result in zip(rows, judged):
                results[i] = result
        return results


def frame_event(frame, outcome) -> dict:
    """The JSON event for one frame: its decision, or its error."""
    event = {"source": frame.source, "frame": frame.index, "time": round(frame.captured, 3)}
    if frame.roi is not None:
        event["roi"] = list(frame.roi)
    if frame.error is not None or isinstance(outcome, Exception):
        event["error"] = frame.error if frame.error is not None else str(outcome)
        return event
    position = frame.position_s
    if position is not None:  # a video file: where in the video, not how long ago (the file is not live)
        event["position_s"] = position
    else:
        event["age_ms"] = round(1000.0 * (time.time() - frame.captured), 1)
    event.update({
        "height": int(frame.image.shape[0]),
        "width": int(frame.image.shape[1]),
        "image_score": outcome.image_score,
        "anomalous": outcome.anomalous,
        "threshold": outcome.threshold,
        "map_max": float(outcome.anomaly_map.max()),
        **({"regions": [r.to_json() for r in outcome.regions]} if outcome.regions is not None else {}),
        "latency_ms": {**{k: round(v, 3) for k, v in outcome.timings_ms.items()},
                       "total": round(sum(outcome.timings_ms.values()), 3)},
    })
    return event


class Inspection:
    """Scores batches of frames and hands each event to the artefact writer and the run's events."""

    def __init__(self, detector: FrameScorer | EngineScoring, events: EventWriter | list, artifacts=None,
                 on_artifact_error=None, on_event: FrameObserver | None = None,
                 before_batch: BatchHook | None = None):
        # a Detector scores every frame; an EngineScoring routes each frame to its camera's detector
        self.scoring = detector if isinstance(detector, EngineScoring) else EngineScoring(detector)
        self.events = EventFanout.of(events)  # an EventFanout, or the sinks for one (objects with .write(event))
        self.artifacts = artifacts  # ArtifactWriter or None
        self.on_artifact_error = on_artifact_error  # called with the OSError; default: raise
        # on_event(frame, outcome, event) runs before the sinks see the event, so it may add to it
        # (the live loop's overlays); outcome is a FrameResult, a FrameError, or None for an error frame
        self.on_event = on_event
        self.before_batch = before_batch  # called before each batch: the one place a detector may change
        self.counts = Counts()

    def run_batch(self, frames: list) -> list[dict]:
        if self.before_batch is not None:
            self.before_batch()
        usable = [f for f in frames if f.error is None]
        outcomes = dict(zip((id(f) for f in usable), score_each(self.scoring, usable)))
        events = []
        for frame in frames:
            outcome = outcomes.get(id(frame))
            event = frame_event(frame, outcome)
            if "error" in event:
                self.counts.errors += 1
            else:
                self.counts.scored += 1
                self.counts.anomalous += bool(outcome.anomalous)
                self.counts.latencies_ms.append(event["latency_ms"]["total"])
                if self.artifacts is not None and frame.name is not None:
                    try:
                        self.artifacts.save(frame.name, frame.image, outcome, event)
                    except OSError as exc:
                        if self.on_artifact_error is None:
                            raise
                        self.on_artifact_error(exc)
            if self.on_event is not None:
                self.on_event(frame, outcome, event)
            self.events.write(event)
            events.append(event)
        return events
