"""Live frame sources: cameras, stream URLs, GStreamer pipelines and video files, each read by a thread of its own.

A live source (camera, stream, pipeline) is read as fast as it delivers and only
its newest frame is kept: the engine never scores a frame that waited behind
others, and a frame replaced before the loop took it is counted as dropped. A
video file is read in order to its end with nothing dropped (its reader waits
for the loop). A live source that fails or stalls is reopened with exponential
backoff; each loss and recovery is a notice (an event without a frame).
"""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

# FFmpeg writes its own lines to stderr for every refused connection or damaged
# frame; each failure is reported here in one line of ours instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402  (after the FFmpeg log level above)

if "OPENCV_LOG_LEVEL" not in os.environ:  # OpenCV's own warnings for each failed open, likewise
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

from winclip.runtime.images import IMAGE_SUFFIXES  # noqa: E402
from winclip.runtime.sources import Frame, is_glob  # noqa: E402

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}
SECRET_QUERY_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig|user", re.IGNORECASE)
LIVE_KINDS = ("camera", "stream", "gstreamer")


class SourceError(Exception):
    """A source that cannot be used, with a one-line reason."""


# --- what --source and --roi say
@dataclass(frozen=True)
class Roi:
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
    text: str  # as given on the command line
    kind: str  # camera | stream | gstreamer | video | images
    target: int | str  # what OpenCV opens: a camera index or device, a URL, a pipeline, a path
    name: str  # what events call it (a URL without its credentials)
    roi: Roi | None = None

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS


@lru_cache(maxsize=None)
def built_with(backend: str) -> bool:
    """Whether this OpenCV build has a video I/O backend ("GStreamer", "FFMPEG"): its build information says so."""
    match = re.search(rf"^\s*{backend}:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper() != "NO"


def has_gstreamer() -> bool:
    return built_with("GStreamer")


def redact_url(url: str) -> str:
    """The URL without user:password and with secret-looking query values masked: safe for events and pages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, "***" if SECRET_QUERY_KEYS.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_source(text: str) -> SourceSpec:
    """What one --source names; SourceError when it is none of the kinds a source can be."""
    text = text.strip()
    if not text:
        raise SourceError("--source is empty")
    if text.isdigit():
        return SourceSpec(text, "camera", int(text), f"camera:{int(text)}")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme:
        name = scheme.group(1).lower()
        if name not in STREAM_SCHEMES:
            raise SourceError(f"--source {text!r}: unsupported scheme {name}://; streams can be "
                              f"{', '.join(s + '://' for s in STREAM_SCHEMES)}")
        return SourceSpec(text, "stream", text, redact_url(text))
    path = Path(text)
    if "!" in text and not path.exists():
        if not has_gstreamer():
            raise SourceError(f"--source {text[:60]!r} looks like a GStreamer pipeline, but this OpenCV was built "
                              "without GStreamer (cv2.getBuildInformation() says GStreamer: NO)")
        first = text.split("!", 1)[0].split()
        return SourceSpec(text, "gstreamer", text, f"gstreamer:{first[0] if first else 'pipeline'}")
    if path.is_dir() or (is_glob(text) and not path.exists()):
        return SourceSpec(text, "images", text, text)
    if path.is_char_device():  # /dev/video0
        return SourceSpec(text, "camera", text, f"camera:{text}")
    if path.is_file():
        kind = "images" if path.suffix.lower() in IMAGE_SUFFIXES else "video"
        return SourceSpec(text, kind, text, text)
    raise SourceError(f"source not found: {text} (not a folder, file, camera index, stream URL or GStreamer pipeline)")


def parse_sources(texts: list[str], rois: list[str] = ()) -> list[SourceSpec]:
    """Every --source, with the Nth --roi applied to the Nth source (`full` leaves one uncropped); names made unique."""
    specs = [parse_source(t) for t in texts]
    if len(rois) > len(specs):
        raise SourceError(f"{len(rois)} --roi for {len(specs)} --source: the Nth --roi crops the Nth source")
    specs = [replace(spec, roi=None if text.strip().lower() in ("full", "-") else Roi.parse(text))
             for spec, text in zip(specs, rois)] + specs[len(rois):]
    seen: dict[str, int] = {}
    unique = []
    for spec in specs:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        unique.append(spec if seen[spec.name] == 1 else replace(spec, name=f"{spec.name}#{seen[spec.name]}"))
    return unique


# --- opening with OpenCV
def why_unreachable(url: str, timeout_s: float) -> str | None:
    """A reason a stream server cannot be reached over TCP (refused, no route, timeout), or None if it answers."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    if not parts.hostname or port is None:
        return None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({exc.strerror or type(exc).__name__})"


def open_capture(spec: SourceSpec, timeout_s: float):
    """(an opened cv2.VideoCapture, None), or (None, why it could not be opened)."""
    ms = int(timeout_s * 1000)
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    try:
        if spec.kind == "camera":
            cap = cv2.VideoCapture(spec.target)
            if cap.isOpened():  # where the backend honours them: no queue of old frames, no read blocking for long
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
                cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms)
        elif spec.kind == "stream":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG if built_with("FFMPEG") else cv2.CAP_ANY, timeouts)
        elif spec.kind == "gstreamer":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(str(spec.target))
    except cv2.error as exc:
        return None, f"OpenCV: {str(exc).strip().splitlines()[-1][:200]}"
    if cap.isOpened():
        return cap, None
    cap.release()
    if spec.kind == "camera":
        return None, "no such device, or it is in use"
    if spec.kind == "stream":
        tcp = urlsplit(spec.target).scheme.lower() in DEFAULT_PORTS  # udp:// and srt:// cannot be probed this way
        reason = why_unreachable(spec.target, min(timeout_s, 3.0)) if tcp else None
        return None, reason or "the server answered, but OpenCV could not read a video stream from it"
    if spec.kind == "gstreamer":
        return None, "GStreamer could not start the pipeline"
    return None, "OpenCV cannot read it as a video"


# --- readers
class SourceReader:
    """What the loop sees of a source: take() frames, ready(), started / failed / finished, close()."""

    def __init__(self, spec: SourceSpec, status, every: int = 1, on_notice=None, wake: threading.Event | None = None,
                 timeout_s: float = 5.0):
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
                 wait_for_source: bool = False, open_attempts: int = 3, backoff_s: tuple[float, float] = (0.5, 30.0),
                 stall_s: float = 5.0, max_failures: int = 5, lost_after: int = 4):
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
            delay = min(delay * 2, self.backoff_s[1])

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
            if frame.error is not None and not self._ever_delivered:  # a --roi that misses the frame: a setup error
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


class VideoFileReader(SourceReader):
    """A video file, frame by frame to its end: nothing is dropped; decoding runs at most `depth` frames ahead."""

    def __init__(self, spec: SourceSpec, status, every: int = 1, on_notice=None, wake=None, *, depth: int = 4,
                 max_failures: int = 8, **_ignored):
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
            if frame.error is not None and not self.started.is_set():  # a --roi that misses the frame
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


def make_reader(spec: SourceSpec, status, every: int = 1, on_notice=None, wake=None, **options) -> SourceReader:
    """The reader for a spec: a LiveReader for cameras, streams and pipelines; a VideoFileReader for files."""
    if spec.kind == "video":
        return VideoFileReader(spec, status, every, on_notice, wake)
    if spec.live:
        return LiveReader(spec, status, every, on_notice, wake, **options)
    raise SourceError(f"{spec.text}: a folder of images is scored on its own (batch mode), not in a live run")
