"""Source readers: a thread per source that feeds the loop.

A live source (camera, stream, pipeline) is read as fast as it delivers and only
its newest frame is kept: the engine never scores a frame that waited behind
others, and a frame replaced before the loop took it is counted as dropped. A
live source that fails or stalls is reopened with exponential backoff; each loss
and recovery is a notice (an event without a frame). Video files have a reader
of their own (video.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from winclip.runtime.defaults import next_wait
from winclip.runtime.line import defaults
from winclip.runtime.line.frames import Frame
from winclip.runtime.line.interfaces import NoticeHandler
from winclip.runtime.line.sources.base import SourceError, SourceSpec, cv2

if TYPE_CHECKING:
    from winclip.runtime.line.status import LiveStatus


def open_capture(spec: SourceSpec, timeout_s: float):
    """(an opened cv2.VideoCapture, None), or (None, why it could not be opened), as the spec's kind opens it."""
    from winclip.runtime.line.sources import SOURCE_KINDS

    return SOURCE_KINDS[spec.kind].open(spec, timeout_s)


class SourceReader:
    """What the loop sees of a source: take() frames, ready(), started / failed / finished, close()."""

    def __init__(self, spec: SourceSpec, status: LiveStatus, every: int = 1, on_notice: NoticeHandler | None = None,
                 wake: threading.Event | None = None, timeout_s: float = 5.0):
        self.spec = spec
        self.name = spec.name
        self.status = status  # LiveStatus
        self.every = max(1, int(every))
        self.on_notice = on_notice or (lambda event: None)
        self.wake = wake or threading.Event()  # set whenever a frame is ready, so the loop need not poll
        self.timeout_s = timeout_s
        self.started = threading.Event()  # the first frame arrived, or the source was given up
        self.failed: str | None = None  # why it could not be used at all
        self.delivering = False  # frames are coming now
        self.index = 0  # frames read from the source so far (the next frame's index)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._guarded_run, name=f"reader {spec.name}", daemon=True)

    # for the loop
    def start(self) -> "SourceReader":
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self._stopping.set()

    def close(self, timeout: float = 3.0) -> None:
        """Stop reading; a read blocked in OpenCV ends within its timeout, and the thread is a daemon regardless."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def finished(self) -> bool:
        return self.failed is not None

    def take(self) -> list[Frame]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    # for subclasses
    def _notice(self, kind: str, **fields) -> None:
        self.on_notice({"event": kind, "source": self.name, "time": round(time.time(), 3), **fields})

    def _give_up(self, reason: str) -> None:
        self.failed = reason
        self.status.set_health(self.name, "lost", reason)
        self._notice("source_failed", detail=reason)
        self.started.set()
        self.wake.set()

    def _make_frame(self, index: int, image: np.ndarray) -> Frame:
        """The frame as the loop scores it: cropped to the ROI; a frame the ROI does not fit is an error frame."""
        now = time.time()
        roi = self.spec.roi
        if roi is None:
            return Frame(self.name, index, now, image)
        try:
            return Frame(self.name, index, now, roi.crop(image), roi=roi.as_tuple())
        except SourceError as exc:
            return Frame(self.name, index, now, None, error=str(exc), roi=roi.as_tuple())

    def _corrupt_frame(self, index: int) -> Frame:
        return Frame(self.name, index, time.time(), None,
                     error="corrupt frame: the source sent it but it could not be decoded; skipped")

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug here must not leave the loop waiting on a silent source
            self._give_up(f"reader stopped: {type(exc).__name__}: {exc}")

    def _run(self) -> None:
        raise NotImplementedError

    def _read(self, cap, keep: bool):
        """(ok, image): a decoded frame when `keep`, else only grabbed (never decoded) to honour --every."""
        try:
            if keep:
                ok, image = cap.read()
                return bool(ok) and image is not None and image.size > 0, image
            return bool(cap.grab()), None
        except cv2.error:
            return False, None


class LiveReader(SourceReader):
    """A camera, stream or pipeline: read as fast as it delivers; only the newest frame waits for the loop.

    Reopened with exponential backoff (backoff_s: first and longest wait) when
    reads fail `max_failures` times in a row or no frame came for `stall_s`. At
    start, a source that cannot be opened in `open_attempts` tries is given up
    (`failed`), unless `wait_for_source`, which keeps trying.
    """

    def __init__(self, spec: SourceSpec, status, every: int = 1, on_notice=None, wake=None, *,
                 wait_for_source: bool = False, open_attempts: int = defaults.OPEN_ATTEMPTS,
                 backoff_s: tuple[float, float] = defaults.BACKOFF_S, stall_s: float = defaults.STALL_TIMEOUT_S,
                 max_failures: int = defaults.MAX_READ_FAILURES, lost_after: int = defaults.LOST_AFTER):
        super().__init__(spec, status, every, on_notice, wake, timeout_s=stall_s)
        self.wait_for_source = wait_for_source
        self.open_attempts = max(1, open_attempts)
        self.backoff_s = backoff_s
        self.stall_s = stall_s
        self.max_failures = max_failures
        self.lost_after = lost_after  # failed reopen attempts after which health says "lost" (still retried)
        self.dropped = 0
        self._lock = threading.Lock()
        self._newest: Frame | None = None
        self._errors: deque[Frame] = deque(maxlen=64)  # corrupt frames, reported with the next take()
        self._ever_delivered = False
        self._down_since: float | None = None  # wall time the source stopped delivering

    def take(self) -> list[Frame]:
        with self._lock:
            frames = list(self._errors)
            self._errors.clear()
            if self._newest is not None:
                frames.append(self._newest)
                self._newest = None
        return frames

    def ready(self) -> bool:
        with self._lock:
            return self._newest is not None or bool(self._errors)

    def _publish(self, frame: Frame) -> None:
        with self._lock:
            if frame.error is not None:
                self._errors.append(frame)
            else:
                if self._newest is not None:  # the loop did not get to it: dropped, never queued
                    self.dropped += 1
                    self.status.record_drop(self.name, 1)
                self._newest = frame
        self.wake.set()

    def _run(self) -> None:
        attempts, delay = 0, self.backoff_s[0]
        while not self._stopping.is_set():
            cap, reason = open_capture(self.spec, self.stall_s)
            if cap is not None:
                try:
                    reason, delivered = self._read_until_failure(cap)
                finally:
                    cap.release()
                if reason is None:  # stopping, or given up
                    return
                if delivered:  # it worked for a while: back off afresh from the shortest wait
                    attempts, delay = 0, self.backoff_s[0]
            attempts += 1
            if not self._ever_delivered and not self.wait_for_source and attempts >= self.open_attempts:
                self._give_up(f"cannot open {self.name} after {attempts} attempts: {reason}; "
                              "--wait-for-source keeps trying")
                return
            if self._down_since is None and self.wait_for_source:  # not there at start
                self._down_since = time.time()
                self._notice("source_lost", detail=f"not available at start: {reason}")
            health = "lost" if attempts >= self.lost_after else "reconnecting"
            self.status.set_health(self.name, health, f"{reason}; next try in {delay:.1f} s")
            self._stopping.wait(delay)
            delay = next_wait(delay, self.backoff_s)

    def _read_until_failure(self, cap) -> tuple[str | None, bool]:
        """Read until the source fails (its reason) or the reader stops (None); and whether frames came."""
        failed_indices: list[int] = []
        delivered = False
        last_good = time.monotonic()
        while not self._stopping.is_set():
            index, keep = self.index, self.index % self.every == 0
            ok, image = self._read(cap, keep)
            self.index += 1
            if not ok:
                failed_indices.append(index)
                quiet = time.monotonic() - last_good
                if len(failed_indices) >= self.max_failures or quiet >= self.stall_s:
                    reason = (f"no frame for {quiet:.1f} s" if quiet >= self.stall_s
                              else f"{len(failed_indices)} reads failed in a row")
                    self.index -= len(failed_indices)  # reads of a source that was gone: no frames
                    return self._lost(reason), delivered
                continue
            last_good = time.monotonic()
            delivered = True
            if not self.delivering:
                self._delivering_again()
            for i in failed_indices:  # failures followed by a good frame: damaged frames, not a lost source
                self._publish(self._corrupt_frame(i))
            failed_indices.clear()
            if not keep:
                continue
            frame = self._make_frame(index, image)
            if frame.error is not None and not self._ever_delivered and self.spec.roi_miss_stops:  # a setup error
                self._give_up(f"{self.name}: {frame.error}")
                return None, delivered
            self._ever_delivered = True
            self.started.set()
            self._publish(frame)
        return None, delivered

    def _delivering_again(self) -> None:
        self.delivering = True
        if self._down_since is not None:
            self._notice("source_recovered", down_s=round(time.time() - self._down_since, 3))
            self._down_since = None
        elif not self._ever_delivered:
            self._notice("source_opened")
        self.status.set_health(self.name, "ok")

    def _lost(self, reason: str) -> str:
        self.delivering = False
        if self._ever_delivered:
            self._down_since = time.time()
            self._notice("source_lost", detail=reason)
            self.status.set_health(self.name, "reconnecting", reason)
        return reason
