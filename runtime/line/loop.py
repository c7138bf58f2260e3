"""The live inspection loop: the newest frame of every source, scored together, until something says stop.

Each round takes what the readers hold (the newest frame of each live source,
the next frame of each video file) and scores it as one batch: one session
call through `Inspection`. Events go to every sink; a sink that fails is warned
about once and the loop goes on, as it does past a bad frame. The loop stops
when its `stop` event is set (SIGINT/SIGTERM), after --max-frames or
--duration, or when every source has ended; the frame in flight is finished
first. Everything it keeps is bounded: one frame per live source, a few per
video file, fixed windows of latencies.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import cv2

from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.images import jpeg_bytes
from winclip.runtime.line import defaults
from winclip.runtime.line.sources import SourceError, make_reader
from winclip.runtime.postprocess import render_overlay

if TYPE_CHECKING:
    from winclip.runtime.line.inspection import Inspection
    from winclip.runtime.line.sources import SourceSpec
    from winclip.runtime.line.status import LiveStatus

log = logging.getLogger(__name__)


class EngineFailed(WinclipError):
    """Scoring failed for batch after batch: the run stops and says why."""


class StatusLine:
    """The run's counts on one terminal line, rewritten in place (~2 Hz); silent when stderr is not a terminal."""

    def __init__(self, status, stream=None, interval_s: float = 0.5, enabled: bool | None = None):
        self.status = status
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval_s):
            return
        self._last = now
        self.stream.write("\r" + self.status.status_line() + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Wipe the line so that a message can be printed in its place."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


class LiveOutputs:
    """The loop's per-event work before the sinks: counts in LiveStatus, saved overlays, the live page's preview."""

    def __init__(self, status: LiveStatus, overlays=None, overlay_mode: str = "anomalous", preview: bool = False):
        self.status = status
        self.overlays = overlays  # LiveOverlayWriter or None
        self.overlay_mode = overlay_mode
        self.overlay_modes: dict[str, str] = {}  # a camera's own mode (a station), else overlay_mode
        self.preview = preview  # --serve: keep a JPEG of each source's newest overlay in the status
        self.overlay_failures = 0
        self._preview_at: dict[str, float] = {}

    def __call__(self, frame, outcome, event: dict) -> bytes | None:
        """Record the event, save its overlay, refresh the page's preview; returns the preview JPEG it drew
        (None when it drew none), which the operator's gallery keeps instead of drawing it again."""
        self.status.record_event(event)
        if "error" in event:
            return None
        mode = self.overlay_modes.get(frame.source, self.overlay_mode)
        if self.overlays is not None and (mode == "all" or (mode == "anomalous" and outcome.anomalous)):
            try:
                self.overlays.save(frame, outcome, event)
            except OSError as exc:  # a full disk: warn once, keep scoring and publishing
                self.overlay_failures += 1
                if self.overlay_failures == 1:
                    log.warning("saving overlays failed (%s); scoring and publishing go on", first_line(exc))
        if self.preview:
            now = time.monotonic()
            if outcome.anomalous or now - self._preview_at.get(frame.source, 0.0) >= defaults.PREVIEW_INTERVAL_S:
                self._preview_at[frame.source] = now
                try:
                    jpeg = jpeg_bytes(render_overlay(frame.image, outcome, max_width=defaults.PREVIEW_WIDTH,
                                                     captured=frame.captured), quality=defaults.PREVIEW_QUALITY)
                except (OSError, cv2.error):  # the page keeps its previous overlay
                    return None
                self.status.set_overlay(frame.source, jpeg, frame.captured, event)
                return jpeg
        return None


class LiveLoop:
    """Runs an Inspection over live sources. Build it, then `run()` (returns why it stopped), then `close()`.

    inspection: an Inspection; source notices go to its event fan-out, after
    the frame events of the round. specs: SourceSpecs (a spec's own `every`
    overrides the loop's).
    reader_options: passed to every LiveReader (backoff_s, stall_s, open_attempts...).
    """

    def __init__(self, inspection: Inspection, specs: list[SourceSpec], status: LiveStatus, *, every: int = 1,
                 max_frames: int | None = None,
                 duration_s: float | None = None, wait_for_source: bool = False, stop: threading.Event | None = None,
                 reader_options: dict | None = None, status_line: StatusLine | None = None,
                 gather_s: float = defaults.GATHER_S):
        self.inspection = inspection
        self.status = status
        self.max_frames = max_frames
        self.duration_s = duration_s
        self.wait_for_source = wait_for_source
        self.stop = stop or threading.Event()
        self.stop_reason: str | None = None  # set with `stop` by whoever sets it (a signal handler)
        self.status_line = status_line
        self.gather_s = gather_s  # how long a round waits for the other sources' frames to join its batch
        self.wake = threading.Event()
        self.notices: deque[dict] = deque(maxlen=1000)  # from the reader threads; the loop writes them out
        self.taken = 0  # frames handed to the detector (scored or error)
        self.batches = 0
        self.failed_batches = 0  # in a row
        self.started_at: float | None = None
        self.between_rounds = None  # called at the start of each round, on the loop thread
        self.events = inspection.events  # the run's EventFanout: source notices go out with the frame events
        self.every = every
        self.reader_options = reader_options or {}
        self.readers = [self._reader(spec) for spec in specs]

    def _reader(self, spec):
        return make_reader(spec, self.status, spec.every or self.every, self.notices.append, self.wake,
                           wait_for_source=self.wait_for_source, **self.reader_options)

    # --- a station's reload: between two rounds, from the loop thread
    def add_source(self, spec) -> None:
        """Start reading another source (a camera added to the station)."""
        reader = self._reader(spec)
        self.readers.append(reader)
        reader.start()

    def remove_source(self, name: str) -> None:
        """Stop reading a source (a camera taken out of the station); the others never wait for it."""
        for reader in [r for r in self.readers if r.name == name]:
            self.readers.remove(reader)
            reader.request_stop()  # its thread ends on its own; joining it here would stall the other sources
            threading.Thread(target=reader.close, kwargs={"timeout": 2.0}, daemon=True).start()

    def retune_source(self, spec) -> None:
        """A source's ROI and frame rate, changed in place: the next frame it reads uses them."""
        for reader in self.readers:
            if reader.name == spec.name:
                reader.spec = spec
                reader.every = max(1, int(spec.every or self.every))

    # --- the run
    def run(self) -> str:
        """Score until stopped; the reason, for the summary. SourceError when a source cannot be opened at start."""
        for reader in self.readers:
            reader.start()
        if not self.wait_for_source:
            reason = self._await_sources()
            if reason is not None:
                return reason
        self.started_at = time.monotonic()
        while True:
            reason = self._should_stop()
            if reason is not None:
                break
            self.wake.clear()  # before taking: a frame that arrives after this wakes the wait below
            if self.between_rounds is not None:
                self.between_rounds()  # a station's reload: sources, ROIs and rates change here, between two rounds
            self._write_notices()
            frames = self._gather()
            if frames:
                if self.max_frames is not None:
                    frames = frames[:self.max_frames - self.taken]
                self._score(frames)
                self.taken += len(frames)
                self.batches += 1
            else:
                self.wake.wait(0.1)
            self._tick()
        self._write_notices()
        return reason

    def _score(self, frames: list) -> None:
        """One batch through the Inspection; an engine failure becomes error events, not the end of the loop."""
        try:
            self.inspection.run_batch(frames)
            self.failed_batches = 0
            return
        except Exception as exc:  # onnxruntime or a bug: one bad batch must not end a run of weeks
            reason = f"scoring failed: {type(exc).__name__}: {first_line(exc)}"
        self.failed_batches += 1
        if self.failed_batches == 1:
            log.warning("%s", reason)
        for frame in frames:
            frame.image, frame.error = None, reason
        self.inspection.run_batch(frames)  # error events, through the usual outputs and sinks
        if self.failed_batches >= defaults.MAX_FAILED_BATCHES:
            raise EngineFailed(f"{reason} ({self.failed_batches} batches in a row)")

    def _await_sources(self) -> str | None:
        """Wait until every source delivered or was given up; SourceError for the first given up."""
        while not all(r.started.is_set() for r in self.readers):
            if self.stop.is_set():
                return self.stop_reason or "stopped"
            self.wake.clear()
            self._write_notices()
            self.wake.wait(0.1)
        self._write_notices()
        failed = [r for r in self.readers if r.failed is not None]
        if failed:
            raise SourceError(failed[0].failed)
        return None

    def _should_stop(self) -> str | None:
        if self.stop.is_set():
            return self.stop_reason or "stopped"
        if self.max_frames is not None and self.taken >= self.max_frames:
            return f"--max-frames {self.max_frames} reached"
        if self.duration_s is not None and time.monotonic() - self.started_at >= self.duration_s:
            return f"--duration {self.duration_s:g} s reached"
        if self.readers and all(r.finished for r in self.readers):
            return "every source ended"
        return None

    def _gather(self) -> list:
        """This round's batch: what every source holds now, after a short wait for sources still on their way."""
        frames, waiting = [], []
        for reader in self.readers:
            taken = reader.take()
            frames += taken
            if not taken and reader.delivering and not reader.finished:
                waiting.append(reader)
        if not frames or not waiting or self.gather_s <= 0:
            return frames
        deadline = time.monotonic() + self.gather_s
        while waiting and (left := deadline - time.monotonic()) > 0:
            self.wake.wait(left)
            self.wake.clear()
            for reader in [r for r in waiting if r.ready()]:
                frames += reader.take()
                waiting.remove(reader)
        return frames

    def _write_notices(self) -> None:
        while self.notices:
            notice = self.notices.popleft()
            self.events.write(notice)
            detail = notice.get("detail") or (f"after {notice['down_s']:.1f} s" if "down_s" in notice else "")
            if notice["event"] not in ("source_opened", "source_failed"):  # a failure is the run's error line
                what = f"{notice['source']}: {notice['event'].replace('_', ' ')}"
                log.info("%s", what + (f" ({detail})" if detail else ""))

    def _tick(self) -> None:
        if self.status_line is not None:
            self.status_line.tick()

    # --- the end
    def close(self) -> None:
        """Stop every reader (their threads are daemons; each is joined briefly)."""
        for reader in self.readers:
            reader.request_stop()  # all at once, so their timeouts overlap
        for reader in self.readers:
            reader.close(timeout=2.0)
        if self.status_line is not None:
            self.status_line.clear()

    def summary(self, reason: str) -> str:
        """One line: why it stopped and what it did."""
        snap = self.status.snapshot()
        elapsed = time.monotonic() - self.started_at if self.started_at is not None else 0.0
        lat = snap["latency_ms"]
        latency = "-" if lat["p50"] is None else f"{lat['p50']:.1f}/{lat['p95']:.1f} ms"
        fps = snap["scored"] / elapsed if elapsed > 0 else 0.0
        losses = sum(s["losses"] for s in snap["sources"].values())
        return (f"stopped: {reason}. {snap['scored']} scored, {snap['errors']} errors, {snap['anomalous']} anomalous, "
                f"{snap['dropped']} dropped in {elapsed:.1f} s ({fps:.2f} fps); p50/p95 {latency}; "
                f"{losses} source losses")
