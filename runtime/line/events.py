"""What an inspection writes: strict JSON event lines, and saved maps and overlays.

Folder runs write one EventLog and their maps and overlays (ArtifactWriter);
live runs save JPEG overlays by capture time (LiveOverlayWriter) and send their
events to the sinks (sinks/event_log.py writes the rotating event files).

Every event is strict JSON (no NaN or Infinity tokens). Files appear whole or
not at all: maps and overlays are written to a unique temporary name beside
their target and renamed; the event log is written as `.partial` and renamed
when the run completes, and a leftover from an interrupted run is kept aside,
never truncated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from winclip.runtime.atomic import write_atomic
from winclip.runtime.images import jpeg_bytes, npy_bytes, png_bytes
from winclip.runtime.line.retention import OverlayRetention
from winclip.runtime.postprocess import render_overlay


def to_json_line(event: dict) -> str:
    """One strict-JSON line; ValueError if the event holds NaN or infinity."""
    return json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n"


def write_whole(fd: int, data: bytes) -> None:
    """Write all of `data` to a file descriptor, unbuffered: nothing of a line waits in a buffer that an
    abrupt exit (a second signal) would drop half-written. A write the disk refuses part-way (full, or over
    RLIMIT_FSIZE) takes its part back, so a file ends with a whole line or the error, never a cut line."""
    view, written = memoryview(data), 0
    try:
        while view:
            n = os.write(fd, view)
            written += n
            view = view[n:]
    except OSError:
        if written:
            try:  # an append-only file of one writer: our bytes are its last ones
                os.ftruncate(fd, os.fstat(fd).st_size - written)
            except OSError:  # a pipe or a terminal: nothing to take back
                pass
        raise


class EventLog:
    """events.jsonl, flushed per line; `.partial` until `close(complete=True)`."""

    def __init__(self, path: Path, force: bool = False):
        self.path = path
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass --force to replace it")
        self.partial = path.with_name(path.name + ".partial")
        self.kept_aside = None
        if self.partial.exists():  # an interrupted run's events: keep them
            n = 1
            while self.partial.with_name(f"{self.partial.name}.{n}").exists():
                n += 1
            self.kept_aside = self.partial.with_name(f"{self.partial.name}.{n}")
            os.replace(self.partial, self.kept_aside)
        self.fd: int | None = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, event: dict) -> None:
        write_whole(self.fd, to_json_line(event).encode("utf-8"))  # a whole line per system call

    def close(self, complete: bool) -> None:
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        if complete:
            os.replace(self.partial, self.path)


class ArtifactWriter:
    """OUT/maps/<name>.npy (float32 at frame resolution) and OUT/overlays/<name>.png."""

    def __init__(self, out: Path, maps: bool, overlays: bool):
        self.maps = out / "maps" if maps else None
        self.overlays = out / "overlays" if overlays else None
        for folder in (self.maps, self.overlays):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, frame: np.ndarray, result, event: dict) -> None:
        """Write what was asked for and record the paths in the event; OSError on failure."""
        if self.maps is not None:
            target = self.maps / f"{name}.npy"
            write_atomic(target, npy_bytes(result.anomaly_map))
            event["map"] = str(target)
        if self.overlays is not None:
            target = self.overlays / f"{name}.png"
            write_atomic(target, png_bytes(render_overlay(frame, result)))
            event["overlay"] = str(target)


def safe_stem(text: str, limit: int = 80) -> str:
    """A file-name component from any source name (a URL, a device path)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "source"
    if len(stem) > limit:
        stem = stem[:limit - 9] + "-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return stem


class LiveOverlayWriter:
    """OUT/overlays/<source>/<YYYYMMDD>/<HHMMSS_mmm>-<frame>.jpg for a live run: full-size annotated overlays.

    Names come from the capture time, so a restarted run (its frame numbers start
    at 0 again) never overwrites the overlays of the one before.
    """

    def __init__(self, folder: Path, keep_days: float | None = None, keep_gb: float | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stems: dict[str, str] = {}
        self.retention = None
        if keep_days is not None or keep_gb is not None:  # --keep-days / --keep-gb
            self.retention = OverlayRetention(self.folder, keep_days, None if keep_gb is None else int(keep_gb * 2**30))
            self.retention.prune()

    def _stem(self, source: str) -> str:
        stem = self._stems.get(source)
        if stem is None:
            stem = safe_stem(source)
            if stem in self._stems.values():  # camera:0 and camera_0
                stem = f"{stem}-{hashlib.sha256(source.encode('utf-8')).hexdigest()[:8]}"
            self._stems[source] = stem
        return stem

    def save(self, frame, result, event: dict) -> Path:
        """Write the overlay and record its path in the event; OSError on failure (a full disk)."""
        stamp = time.localtime(frame.captured)
        folder = self.folder / self._stem(frame.source) / time.strftime("%Y%m%d", stamp)
        folder.mkdir(parents=True, exist_ok=True)
        millis = int((frame.captured % 1) * 1000)
        target = folder / f"{time.strftime('%H%M%S', stamp)}_{millis:03d}-{frame.index}.jpg"
        data = jpeg_bytes(render_overlay(frame.image, result, captured=frame.captured), quality=90)
        write_atomic(target, data)
        event["overlay"] = str(target)
        if self.retention is not None:
            self.retention.saved(target, len(data))
        return target
