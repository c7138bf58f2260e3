"""Saved overlays that do not grow forever: pruned by age and total size, oldest first.

Overlays live in OUT/overlays/<source>/<YYYYMMDD>/<HHMMSS_mmm>-<frame>.jpg, so
the day folders sort by age and the files inside by time. What is kept in memory
is one total per day folder (never one entry per file: `--overlays all` writes
tens of thousands a day), built by one walk at start and kept up to date as
overlays are saved; only the oldest day folder is listed when files must go.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

PRUNE_EVERY = 100  # saves between two checks
PRUNE_INTERVAL_S = 60.0  # and at least this often


class OverlayRetention:
    """Keeps OUT/overlays within `keep_days` of age and `keep_bytes` of size (either may be None)."""

    def __init__(self, folder: Path, keep_days: float | None = None, keep_bytes: int | None = None):
        self.folder = Path(folder)
        self.keep_days, self.keep_bytes = keep_days, keep_bytes
        self.days: dict[Path, int] = {}  # day folder -> bytes in it
        self._saves, self._checked = 0, time.monotonic()
        for source in _folders(self.folder):
            for day in _folders(source):
                self.days[day] = sum(_size(f) for f in _files(day))

    @property
    def total(self) -> int:
        return sum(self.days.values())

    def saved(self, path: Path, size: int) -> None:
        """Count a new overlay; every so often, prune."""
        day = path.parent
        self.days[day] = self.days.get(day, 0) + size
        self._saves += 1
        if self._saves % PRUNE_EVERY == 0 or time.monotonic() - self._checked >= PRUNE_INTERVAL_S:
            self.prune()

    def prune(self, now: float | None = None) -> tuple[int, int]:
        """Delete what is too old or over the size; (files, bytes) removed."""
        self._checked = time.monotonic()
        now = time.time() if now is None else now
        files = freed = 0
        if self.keep_days is not None:
            cutoff = now - self.keep_days * 86400.0
            last_day = None  # the first day that keeps a file: no later day can hold an older one
            for day in self._oldest_first():
                if last_day is not None and day.name > last_day:
                    break
                count, size, kept = self._remove_files(day, lambda f: f.stat().st_mtime < cutoff)
                files, freed = files + count, freed + size
                if kept and last_day is None:
                    last_day = day.name
        if self.keep_bytes is not None:
            for day in self._oldest_first():
                if self.total <= self.keep_bytes:
                    break
                count, size, _ = self._remove_files(day, lambda f: self.total > self.keep_bytes)
                files, freed = files + count, freed + size
        if files:
            reasons = []
            if self.keep_days is not None:
                reasons.append(f"older than {self.keep_days:g} days")
            if self.keep_bytes is not None:
                reasons.append(f"over {self.keep_bytes / 2**30:.3g} GB")
            log.info("removed %d saved overlays (%.1f MB): %s", files, freed / 2**20, " or ".join(reasons))
        return files, freed

    def _oldest_first(self) -> list[Path]:
        return sorted(self.days, key=lambda day: (day.name, day.parent.name))

    def _remove_files(self, day: Path, doomed) -> tuple[int, int, bool]:
        """Remove the day's files oldest first while `doomed` says so: (files, bytes, whether any stopped it)."""
        count = freed = 0
        listed = sorted(_files(day))  # names start with the capture time: oldest first
        kept = False
        for path in listed:
            try:
                if not doomed(path):
                    kept = True
                    break
                size = _size(path)
                path.unlink()
            except OSError:
                continue
            count, freed = count + 1, freed + size
            self.days[day] = max(0, self.days.get(day, 0) - size)
        if count == len(listed):  # every file gone (saves run on this thread: none arrived meanwhile)
            shutil.rmtree(day, ignore_errors=True)
            self.days.pop(day, None)
        return count, freed, kept


def _folders(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _files(folder: Path):
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
