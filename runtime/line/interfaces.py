"""The typed seams of the line app: what the readers, the inspection, the loop and the operator hand each other.

Each is a Protocol, so that a test double or a new part only has to have the
same members; nothing here imports the objects that implement them.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class EventWriter(Protocol):
    """Takes one event (a dict that is strict JSON): a sink, or the run's EventFanout."""

    def write(self, event: dict) -> None: ...


class FrameScorer(Protocol):
    """Scores frames (a Detector): `embed` runs the engine on a batch of images, `judge` turns a batch's graph
    outputs into one result per image under this scorer's object, memory and thresholds (FrameError for an
    unusable image or a score that is not finite)."""

    threshold: float | None

    def embed(self, images: list) -> tuple[dict, dict]: ...

    def judge(self, images: list, outputs: dict, times: dict) -> list: ...


class FrameObserver(Protocol):
    """Sees each frame's event before the sinks do, and may add to it: (frame, outcome, event)."""

    def __call__(self, frame: Any, outcome: Any, event: dict) -> Any: ...


class BatchHook(Protocol):
    """Runs before each batch: the one moment where the scoring set-up may change (a new profile version)."""

    def __call__(self) -> None: ...


NoticeHandler = Callable[[dict], None]  # a reader's source notices (opened, lost, recovered, ended), to the loop
ScorerOf = Callable[[Any], "FrameScorer"]  # which detector judges a frame (by its camera)


class Closable(Protocol):
    """What a run opens and closes at its end (sinks, the page's server, the operator desk), within a timeout."""

    def close(self, timeout: float = 0.0) -> None: ...
