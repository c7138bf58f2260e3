"""What an inspection writes: strict JSON event lines, and saved maps and overlays.

Folder runs write one EventLog; live runs append to a RotatingEventLog and/or
stdout (StreamEvents) and save JPEG overlays by capture time (LiveOverlayWriter).

Every event is strict JSON (no NaN or Infinity tokens). Files appear whole or
not at all: maps and overlays are written to a unique temporary name beside
their target and renamed; the event log is written as `.partial` and renamed
when the run completes, and a leftover from an interrupted run is kept aside,
never truncated.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np

from winclip.runtime.atomic import write_atomic
from winclip.runtime.postprocess import Region, annotate, heatmap_overlay, to_bgr8


def to_json_line(event: dict) -> str:
    """One strict-JSON line; ValueError if the event holds NaN or infinity."""
    return json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes()


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
        self.file = open(self.partial, "x", encoding="utf-8")

    def write(self, event: dict) -> None:
        self.file.write(to_json_line(event))
        self.file.flush()

    def close(self, complete: bool) -> None:
        if self.file.closed:
            return
        self.file.close()
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


class RotatingEventLog:
    """events.jsonl for live runs of weeks: appended to, flushed per line, rotated by size.

    When the next line would take the file past `max_bytes`, it becomes
    `events.jsonl.1` (older ones shift to .2, .3, ...; only `keep` are kept) and a
    new file starts. A restarted service appends to the file it left; a line cut
    off by a crash is closed with a newline first, so the lines after it parse.
    """

    def __init__(self, path: Path, max_bytes: int = 100 << 20, keep: int = 5):
        if max_bytes < 1 or keep < 1:
            raise ValueError("max_bytes and keep must be >= 1")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.rotations = 0
        self._open()

    def _open(self) -> None:
        self.file = open(self.path, "a", encoding="utf-8")
        self.size = os.fstat(self.file.fileno()).st_size
        if self.size and not self._ends_with_newline():
            self.file.write("\n")
            self.file.flush()
            self.size += 1

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def _rotate(self) -> None:
        self.file.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._open()

    def write(self, event: dict) -> None:
        line = to_json_line(event)
        data_len = len(line.encode("utf-8"))
        if self.size and self.size + data_len > self.max_bytes:
            self._rotate()
        self.file.write(line)
        self.file.flush()
        self.size += data_len

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class StreamEvents:
    """Event lines to a text stream (stdout for `--events -`), flushed per line for whoever reads the pipe."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, event: dict) -> None:
        self.stream.write(to_json_line(event))
        self.stream.flush()

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a stream already closed
            pass


def render_overlay(image: np.ndarray, result, max_width: int | None = None) -> np.ndarray:
    """The annotated heat-map overlay of a scored frame, 8-bit BGR; shrunk first to `max_width` when wider.

    Shrinking the frame and the map before drawing keeps a preview cheap (the
    heat map and the JPEG cost follow the pixels drawn).
    """
    amap, regions = result.anomaly_map, result.regions
    width = image.shape[1]
    if max_width is not None and width > max_width:
        scale = max_width / width
        size = (max_width, max(1, round(image.shape[0] * scale)))
        image = cv2.resize(to_bgr8(image), size, interpolation=cv2.INTER_AREA)
        amap = cv2.resize(amap, size, interpolation=cv2.INTER_LINEAR)
        regions = None if regions is None else [
            Region(round(r.x * scale), round(r.y * scale), max(1, round(r.width * scale)),
                   max(1, round(r.height * scale)), r.area, r.peak) for r in regions]
    return annotate(heatmap_overlay(image, amap), regions, result.image_score, result.anomalous)


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return encoded.tobytes()


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

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stems: dict[str, str] = {}

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
        write_atomic(target, jpeg_bytes(render_overlay(frame.image, result), quality=90))
        event["overlay"] = str(target)
        return target
