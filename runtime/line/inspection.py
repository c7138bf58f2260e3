"""The inspection driver shared by every source: batches of frames in, events out.

Per batch: one session call (a frame that breaks the batch is retried alone, so
the others still get scored), then for each frame an event (a decision or an
error, never a NaN passed as a pass), its saved artefacts, and every sink.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from winclip.runtime.detector import FrameError, FrameResult

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


def score_each(detector, images: list) -> list[FrameResult | FrameError]:
    """Results for a batch; a frame that cannot be scored gets its FrameError, the others their results."""
    if not images:
        return []
    try:
        return detector(images)
    except FrameError as exc:
        if len(images) == 1:
            return [exc]
        return [r for image in images for r in score_each(detector, [image])]


def frame_event(frame, outcome, threshold: float | None) -> dict:
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
        "threshold": threshold,
        "map_max": float(outcome.anomaly_map.max()),
        **({"regions": [r.to_json() for r in outcome.regions]} if outcome.regions is not None else {}),
        "latency_ms": {**{k: round(v, 3) for k, v in outcome.timings_ms.items()},
                       "total": round(sum(outcome.timings_ms.values()), 3)},
    })
    return event


class Inspection:
    """Scores batches of frames and hands each event to the artefact writer and the sinks."""

    def __init__(self, detector, sinks: list, artifacts=None, on_artifact_error=None, on_event=None,
                 before_batch=None):
        self.detector = detector
        self.sinks = sinks  # objects with .write(event)
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
        outcomes = dict(zip((id(f) for f in usable), score_each(self.detector, [f.image for f in usable])))
        events = []
        for frame in frames:
            outcome = outcomes.get(id(frame))
            event = frame_event(frame, outcome, self.detector.threshold)
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
            for sink in self.sinks:
                sink.write(event)
            events.append(event)
        return events
