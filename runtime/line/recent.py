"""The last scored frames of each source, kept so that a teach can be previewed on them before it happens.

A frame's verdict under another memory and threshold needs the frame's graph
outputs (its window and patch features), not its pixels: with them a new memory
re-scores it in numpy, with no engine call (as the reference set does for a
profile's normals). The newest RECENT_FRAMES of each source are kept, as
float16 (half the bytes; scores move by about 1e-4), within RECENT_MB for the
whole run: past it the source holding the most gives up its oldest first.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from winclip.runtime.line import defaults
from winclip.runtime.profiles.reference import ReferenceSet


@dataclass
class RecentFrame:
    """One scored frame: what the loop decided then, and what it takes to decide it again."""

    source: str
    frame: int
    captured: float
    score: float
    anomalous: bool | None
    outputs: dict  # output name -> float16 array of this frame
    size: tuple[int, int]  # height, width (the pixel map's size)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.outputs.values())


class RecentFrames:
    """Per source, the newest `per_source` scored frames with their graph outputs, within `max_mb` in all."""

    def __init__(self, per_source: int = defaults.RECENT_FRAMES, max_mb: float = defaults.RECENT_MB):
        self.per_source, self.max_bytes = per_source, int(max_mb * (1 << 20))
        self._lock = threading.Lock()
        self._frames: dict[str, deque[RecentFrame]] = {}
        self._bytes = 0

    def add(self, frame, outcome) -> None:
        """Keep a scored frame whose outcome carries its outputs (Detector.keep_outputs); others are skipped."""
        if getattr(outcome, "outputs", None) is None:
            return
        kept = RecentFrame(frame.source, frame.index, frame.captured, outcome.image_score, outcome.anomalous,
                           {k: np.asarray(v, dtype=np.float16) for k, v in outcome.outputs.items()},
                           tuple(int(d) for d in np.shape(frame.image)[:2]))
        with self._lock:
            frames = self._frames.setdefault(frame.source, deque())
            frames.append(kept)
            self._bytes += kept.nbytes
            if len(frames) > self.per_source:
                self._bytes -= frames.popleft().nbytes
            while self._bytes > self.max_bytes:
                fullest = max(self._frames.values(), key=len)
                if len(fullest) <= 1:
                    break
                self._bytes -= fullest.popleft().nbytes

    def frames(self, source: str | None = None) -> list[RecentFrame]:
        """Oldest first: one source's frames, or every source's."""
        with self._lock:
            if source is not None:
                return list(self._frames.get(source, ()))
            return [f for frames in self._frames.values() for f in frames]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {source: len(frames) for source, frames in self._frames.items()}

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._bytes = 0


def as_reference(frames: list[RecentFrame]) -> ReferenceSet | None:
    """Frames as a ReferenceSet (float32 outputs), which scores them against any memory; None when empty."""
    if not frames:
        return None
    names = list(frames[0].outputs)
    outputs = {k: np.stack([f.outputs[k] for f in frames]).astype(np.float32) for k in names}
    sizes = np.array([f.size for f in frames], dtype=np.int64).reshape(-1, 2)
    return ReferenceSet(outputs, sizes, [f"{f.source}#{f.frame}" for f in frames])
