"""What a source is: its spec (what --source and --roi said), and the kind of source it names.

A `SourceKind` is one row of the table in `__init__.py`: it recognises the
--source texts it owns, opens them with OpenCV, says in words why one could not
be opened, and names the reader class that feeds the loop.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# FFmpeg writes its own lines to stderr for every refused connection or damaged
# frame; each failure is reported here in one line of ours instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402  (after the FFmpeg log level above)

if "OPENCV_LOG_LEVEL" not in os.environ:  # OpenCV's own warnings for each failed open, likewise
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

from winclip.runtime.errors import WinclipError  # noqa: E402


class SourceError(WinclipError):
    """A source that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class Roi:
    """A crop of the source's frames, in whole pixels: what --roi x,y,w,h says."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> "Roi":
        parts = text.split(",")
        try:
            x, y, w, h = (int(p.strip()) for p in parts)
        except ValueError:
            raise SourceError(f"--roi must be x,y,w,h in whole pixels, got {text!r}") from None
        if x < 0 or y < 0 or w < 1 or h < 1:
            raise SourceError(f"--roi {text!r}: x and y must be >= 0, w and h >= 1")
        return cls(x, y, w, h)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """A copy of the region (so the full frame can be freed); SourceError if it does not lie inside."""
        h, w = image.shape[:2]
        if self.x + self.width > w or self.y + self.height > h:
            raise SourceError(f"--roi {self.x},{self.y},{self.width},{self.height} does not fit the {w}x{h} frame")
        return np.ascontiguousarray(image[self.y:self.y + self.height, self.x:self.x + self.width])


@dataclass(frozen=True)
class SourceSpec:
    """One --source: what was given, its kind, what OpenCV opens, and the name events use."""

    text: str  # as given on the command line
    kind: str  # a key of SOURCE_KINDS
    target: int | str  # what OpenCV opens: a camera index or device, a URL, a pipeline, a path
    name: str  # what events call it (a URL without its credentials)
    roi: Roi | None = None
    live: bool = False  # read as fast as it delivers, newest frame only (cameras, streams, pipelines)
    every: int | None = None  # score every Nth frame (a station camera's own rate); None: the run's --every
    # an ROI that misses the first frame: the run's setup error (True), or only that frame's error event (a
    # station, whose other cameras go on)
    roi_miss_stops: bool = True


class SourceKind:
    """One kind of --source. Subclasses set `name` and `live` and implement `parse` (and `open` where it differs)."""

    name: str = ""
    live: bool = False
    reader = None  # the SourceReader subclass that feeds the loop; None: not a live-loop source (images)

    def parse(self, text: str) -> SourceSpec | None:
        """The spec if `text` names a source of this kind, else None (SourceError if it is one, but unusable)."""
        raise NotImplementedError

    def spec(self, text: str, target, name: str) -> SourceSpec:
        return SourceSpec(text, self.name, target, name, live=self.live)

    def capture(self, spec: SourceSpec, timeout_s: float):
        """A cv2.VideoCapture for the spec (opened or not)."""
        return cv2.VideoCapture(str(spec.target))

    def why_not_opened(self, spec: SourceSpec, timeout_s: float) -> str:
        return "OpenCV cannot read it as a video"

    def open(self, spec: SourceSpec, timeout_s: float):
        """(an opened cv2.VideoCapture, None), or (None, why it could not be opened)."""
        try:
            cap = self.capture(spec, timeout_s)
        except cv2.error as exc:
            return None, f"OpenCV: {str(exc).strip().splitlines()[-1][:200]}"
        if cap.isOpened():
            return cap, None
        cap.release()
        return None, self.why_not_opened(spec, timeout_s)


@lru_cache(maxsize=None)
def built_with(backend: str) -> bool:
    """Whether this OpenCV build has a video I/O backend ("GStreamer", "FFMPEG"): its build information says so."""
    match = re.search(rf"^\s*{backend}:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper() != "NO"
