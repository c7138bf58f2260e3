"""The user's own cache folder: optimised graphs, compiled blobs, passed self-checks.

Never inside a bundle: a cached graph that came with a bundle would run instead
of the checksummed one. Names are derived from hashes only.
"""

from __future__ import annotations

import os
from pathlib import Path


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
