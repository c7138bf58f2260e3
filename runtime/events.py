"""What an inspection writes: strict JSON event lines, and saved maps and overlays.

Every event is strict JSON (no NaN or Infinity tokens). Files appear whole or
not at all: maps and overlays are written to a unique temporary name beside
their target and renamed; the event log is written as `.partial` and renamed
when the run completes, and a leftover from an interrupted run is kept aside,
never truncated.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np

from winclip.runtime.atomic import write_atomic
from winclip.runtime.postprocess import annotate, heatmap_overlay


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
            image = annotate(heatmap_overlay(frame, result.anomaly_map), result.regions, result.image_score,
                             result.anomalous)
            write_atomic(target, png_bytes(image))
            event["overlay"] = str(target)
