"""A folder or glob of images: scored once, in batch mode (never part of a live run)."""

from __future__ import annotations

from pathlib import Path

from winclip.runtime.images import IMAGE_SUFFIXES
from winclip.runtime.line.frames import is_glob
from winclip.runtime.line.sources.base import SourceKind, SourceSpec


class Images(SourceKind):
    name = "images"
    live = False
    reader = None

    def parse(self, text: str) -> SourceSpec | None:
        path = Path(text)
        if path.is_dir() or (is_glob(text) and not path.exists()):
            return self.spec(text, text, text)
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            return self.spec(text, text, text)
        return None


KIND = Images()
