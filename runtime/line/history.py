"""What the live page shows of the past: a score trend per source and a gallery of anomalous frames.

Both are bounded for runs of weeks. The trend keeps fixed-width time buckets
(min, mean, max and counts of the scores, and the threshold in force) for the
last TREND_WINDOW_S seconds per source. The gallery keeps the newest
GALLERY_PICTURES anomalous frames with their overlay (a JPEG at the page's
width) and their original pixels (for "this part is good"), within
GALLERY_ORIGINALS_MB, and a compact index of the newest GALLERY_INDEX anomalous
frames to page back through; an older item's picture is the overlay the run
saved under OUT/overlays (read only from inside that folder), if any.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from winclip.runtime.images import jpeg_bytes
from winclip.runtime.line import defaults
from winclip.runtime.postprocess import render_overlay


class ScoreTrend:
    """Per source, the last `window_s` seconds of scores in `bucket_s` buckets (by the time they were scored)."""

    def __init__(self, window_s: float = defaults.TREND_WINDOW_S, bucket_s: float = defaults.TREND_BUCKET_S):
        self.window_s, self.bucket_s = window_s, bucket_s
        self._lock = threading.Lock()
        self._buckets: dict[str, deque] = {}
        self._slots = max(1, math.ceil(window_s / bucket_s))

    def add(self, source: str, score: float, anomalous: bool | None, threshold: float | None,
            when: float | None = None) -> None:
        when = time.time() if when is None else when
        slot = math.floor(when / self.bucket_s)
        with self._lock:
            buckets = self._buckets.setdefault(source, deque(maxlen=self._slots))
            if not buckets or buckets[-1]["slot"] < slot:
                buckets.append({"slot": slot, "n": 0, "sum": 0.0, "min": score, "max": score, "anomalous": 0,
                                "threshold": threshold})
            bucket = buckets[-1]
            bucket["n"] += 1
            bucket["sum"] += score
            bucket["min"], bucket["max"] = min(bucket["min"], score), max(bucket["max"], score)
            bucket["anomalous"] += bool(anomalous)
            bucket["threshold"] = threshold

    def series(self, now: float | None = None) -> dict:
        """JSON-ready: per source, one point per bucket within the window: [time, min, mean, max, n, anomalous, threshold]."""
        now = time.time() if now is None else now
        first = math.floor((now - self.window_s) / self.bucket_s)
        with self._lock:
            out = {}
            for source, buckets in self._buckets.items():
                out[source] = [[round((b["slot"] + 0.5) * self.bucket_s, 3), b["min"], b["sum"] / b["n"], b["max"],
                                b["n"], b["anomalous"], b["threshold"]] for b in buckets if b["slot"] >= first]
        return {"window_s": self.window_s, "bucket_s": self.bucket_s, "now": round(now, 3), "sources": out}


@dataclass
class Flagged:
    """One anomalous frame in the gallery: what the page lists about it, and where its picture is."""

    id: int
    source: str
    frame: int
    captured: float
    scored_at: float
    score: float
    threshold: float | None
    regions: list = field(default_factory=list)
    version: int | None = None  # the profile version that flagged it
    overlay_path: str | None = None  # the overlay the run saved, if any
    taught: int | None = None  # the profile version it was taught into
    undone: int | None = None  # a version it was taught into that is no longer in use (undo): it may be taught again

    def to_json(self, has_picture: bool, has_original: bool) -> dict:
        return {"id": self.id, "source": self.source, "frame": self.frame, "time": self.captured,
                "scored_at": self.scored_at, "score": self.score, "threshold": self.threshold,
                "regions": self.regions, "version": self.version, "picture": has_picture,
                "original": has_original, "taught": self.taught, "undone": self.undone}


class KeptImages:
    """Images by key, the newest kept within a count and a number of bytes (the oldest go first). Not locked:
    its owner holds its own lock around every call."""

    def __init__(self, count: int, max_bytes: int):
        self.count, self.max_bytes = count, max_bytes
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def put(self, key: int, image: np.ndarray) -> None:
        self.pop(key)
        self._images[key] = image
        self._bytes += image.nbytes
        while self._images and (len(self._images) > self.count or self._bytes > self.max_bytes):
            _, old = self._images.popitem(last=False)
            self._bytes -= old.nbytes

    def pop(self, key: int) -> np.ndarray | None:
        old = self._images.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        return old

    def get(self, key: int) -> np.ndarray | None:
        return self._images.get(key)

    def __contains__(self, key) -> bool:
        return key in self._images

    def values(self):
        return self._images.values()


def saved_overlay(saved: str | None, root: Path | None) -> Path | None:
    """An overlay the run saved, when it is still a file inside `root` (OUT/overlays, resolved); else None."""
    if saved is None or root is None:
        return None
    try:
        path = Path(saved).resolve()
    except OSError:
        return None
    return path if path.is_relative_to(root) and path.is_file() else None


class Gallery:
    """The newest anomalous frames: pictures and originals for the newest few, an index for the rest."""

    def __init__(self, pictures: int = defaults.GALLERY_PICTURES, originals_mb: float = defaults.GALLERY_ORIGINALS_MB,
                 index: int = defaults.GALLERY_INDEX, overlay_root: Path | None = None,
                 width: int = defaults.PREVIEW_WIDTH):
        self.pictures, self.originals_bytes, self.width = pictures, int(originals_mb * (1 << 20)), width
        self.overlay_root = None if overlay_root is None else Path(overlay_root).resolve()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._index: deque[Flagged] = deque(maxlen=index)
        self._jpegs: OrderedDict[int, bytes] = OrderedDict()
        self._originals = KeptImages(pictures, self.originals_bytes)

    def add(self, frame, outcome, event: dict, version: int | None = None, jpeg: bytes | None = None) -> Flagged:
        """Keep an anomalous frame: its overlay at the page's width (`jpeg` when the live preview already drew
        it, else drawn here) and its original pixels."""
        if jpeg is None:
            jpeg = jpeg_bytes(render_overlay(frame.image, outcome, max_width=self.width, captured=frame.captured),
                              quality=defaults.PREVIEW_QUALITY)
        item = Flagged(next(self._ids), frame.source, frame.index, frame.captured, time.time(), outcome.image_score,
                       event.get("threshold"), event.get("regions") or [], version, event.get("overlay"))
        with self._lock:
            self._index.append(item)
            self._jpegs[item.id] = jpeg
            while len(self._jpegs) > self.pictures:
                self._jpegs.popitem(last=False)
            self._originals.put(item.id, frame.image)
        return item

    def page(self, before: int | None = None, limit: int = defaults.GALLERY_PAGE, source: str | None = None) -> dict:
        """Newest first: up to `limit` items older than id `before`; `older` is the cursor for the next page."""
        with self._lock:
            items = [i for i in reversed(self._index)
                     if (before is None or i.id < before) and (source is None or i.source == source)]
            chosen = items[:limit]
            listed = [i.to_json(i.id in self._jpegs or self._disk_picture(i) is not None, i.id in self._originals)
                      for i in chosen]
            total = len(self._index)
        older = chosen[-1].id if len(items) > limit else None
        return {"items": listed, "older": older, "total": total}

    def item(self, item_id: int) -> Flagged | None:
        with self._lock:
            return next((i for i in self._index if i.id == item_id), None)

    def picture(self, item_id: int) -> bytes | None:
        """The item's overlay: the JPEG kept in memory, else the one the run saved (from inside OUT/overlays)."""
        with self._lock:
            jpeg = self._jpegs.get(item_id)
            item = None if jpeg is not None else next((i for i in self._index if i.id == item_id), None)
        if jpeg is not None or item is None:
            return jpeg
        path = self._disk_picture(item)
        try:
            return None if path is None else path.read_bytes()
        except OSError:
            return None

    def has_jpeg(self, item_id: int) -> bool:
        """Whether the item's overlay is still kept in memory (only the newest `pictures` are)."""
        with self._lock:
            return item_id in self._jpegs

    def original(self, item_id: int) -> np.ndarray | None:
        with self._lock:
            return self._originals.get(item_id)

    def mark_taught(self, item_id: int, version: int) -> None:
        with self._lock:
            for item in self._index:
                if item.id == item_id:
                    item.taught, item.undone = version, None

    def forget_taught_outside(self, lineage: set[int]) -> None:
        """After a switch of version: an item taught into a version outside the one in use and its ancestors was
        undone, so it says so and may be taught again."""
        with self._lock:
            for item in self._index:
                if item.taught is not None and item.taught not in lineage:
                    item.taught, item.undone = None, item.taught

    def _disk_picture(self, item: Flagged) -> Path | None:
        return saved_overlay(item.overlay_path, self.overlay_root)
