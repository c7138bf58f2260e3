"""Video files: read in order to their end, nothing dropped (the reader waits for the loop)."""

from __future__ import annotations

import queue
from pathlib import Path

from winclip.runtime.line.frames import Frame
from winclip.runtime.line.sources.base import SourceKind, SourceSpec, cv2
from winclip.runtime.line.sources.readers import SourceReader, open_capture


class VideoFileReader(SourceReader):
    """A video file, frame by frame to its end: nothing is dropped; decoding runs at most `depth` frames ahead."""

    def __init__(self, spec: SourceSpec, status, every: int = 1, on_notice=None, wake=None, *, depth: int = 4,
                 max_failures: int = 8):
        super().__init__(spec, status, every, on_notice, wake)
        self.max_failures = max_failures  # failed reads in a row that mean the end (a damaged frame is one)
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=depth)
        self._done = False
        self._end_reported = False

    @property
    def finished(self) -> bool:
        return self.failed is not None or (self._done and self._queue.empty() and self._end_reported)

    def take(self) -> list[Frame]:
        try:
            return [self._queue.get_nowait()]
        except queue.Empty:
            if self._done and not self._end_reported:  # after its last frame, so the events read in order
                self._end_reported = True
                self._notice("source_ended", frames=self.index)
            return []

    def ready(self) -> bool:
        return not self._queue.empty()

    def _put(self, frame: Frame) -> bool:
        """Wait for room (the loop sets the pace); False when the reader is stopping."""
        while not self._stopping.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
                self.wake.set()
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        cap, reason = open_capture(self.spec, self.timeout_s)
        if cap is None:
            self._give_up(f"cannot open video {self.name}: {reason}")
            return
        try:
            self._read_to_end(cap)
        finally:
            cap.release()

    def _read_to_end(self, cap) -> None:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.status.set_health(self.name, "ok")
        self._notice("source_opened", frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None)
        self.delivering = True
        failed_indices: list[int] = []
        while len(failed_indices) < self.max_failures:  # that many failed reads in a row: the end
            if self._stopping.is_set():
                return
            index, keep = self.index, self.index % self.every == 0
            ok, image = self._read(cap, keep)
            self.index += 1
            if not ok:
                failed_indices.append(index)
                continue
            for i in failed_indices:  # a damaged frame inside the file: an error frame, then on
                if not self._put(self._corrupt_frame(i)):
                    return
            failed_indices.clear()
            if not keep:
                continue
            frame = self._make_frame(index, image)
            frame.position_s = round(index / fps, 3) if fps > 0 else None
            if frame.error is not None and not self.started.is_set() and self.spec.roi_miss_stops:  # a --roi miss
                self._give_up(f"{self.name}: {frame.error}")
                return
            self.started.set()
            if not self._put(frame):
                return
        self.index -= len(failed_indices)  # the reads past the last frame were no frames
        self.delivering = False
        self._done = True
        self.started.set()
        self.status.set_health(self.name, "ended", f"{self.index} frames")
        self.wake.set()


class Video(SourceKind):
    name = "video"
    live = False
    reader = VideoFileReader

    def parse(self, text: str) -> SourceSpec | None:
        return self.spec(text, text, text) if Path(text).is_file() else None


KIND = Video()
