"""The user's own cache folder: optimised graphs, compiled blobs, passed self-checks.

Never inside a bundle: a cached graph that came with a bundle would run instead
of the checksummed one. Names are derived from hashes only. The folder is
bounded (WINCLIP_CACHE_MAX_GB, default below): when a new entry would take it
over, the entries used least recently go first (a use touches the file).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_MAX_BYTES = 2 << 30  # the whole folder; WINCLIP_CACHE_MAX_GB overrides


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/winclip-edge, or ~/.cache/winclip-edge."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "winclip-edge"


def cache_path(name: str, cache_dir: Path | None = None) -> Path | None:
    """A file of this user's cache folder, or None when the folder cannot be written."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    return folder / name


def cache_limit() -> int:
    """The cache folder's size bound in bytes: WINCLIP_CACHE_MAX_GB if set to a number > 0, else the default."""
    try:
        value = float(os.environ.get("WINCLIP_CACHE_MAX_GB", ""))
    except ValueError:
        return CACHE_MAX_BYTES
    return int(value * 2**30) if 0 < value < float("inf") else CACHE_MAX_BYTES


def touch(path: Path) -> None:
    """Mark a cache entry as used now (entries used least recently are pruned first)."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune_cache(folder: Path, keep: Path | None = None, limit: int | None = None) -> int:
    """Delete the least recently used entries (files, or folders such as an optimised graph with its weights)
    until the folder is within `limit`; never `keep`. Bytes freed."""
    limit = cache_limit() if limit is None else limit
    try:
        entries = [(e.stat(follow_symlinks=False).st_mtime, _size(Path(e.path)), Path(e.path))
                   for e in os.scandir(folder) if not e.is_symlink()]
    except OSError:
        return 0
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _, size, path in sorted(entries):
        if total - freed <= limit:
            break
        if keep is not None and path == keep:
            continue
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            freed += size
        except OSError:
            pass
    if freed:
        log.info("the cache %s was over %.1f GB: removed %.0f MB of the entries used least recently",
                 folder, limit / 2**30, freed / 2**20)
    return freed


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
