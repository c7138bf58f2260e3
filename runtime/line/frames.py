"""Frame sources: iterators of `Frame`s that the inspection driver scores in batches.

A source never raises for one bad frame: a frame that cannot be read is yielded
with its `error` set, so it becomes an error event and the run goes on.
"""

from __future__ import annotations

import glob
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from winclip.runtime.defaults import MAX_NAME_CHARS
from winclip.runtime.images import IMAGE_SUFFIXES, ImageReadError, display_path, list_images, read_image

GLOB_CHARS = "*?["


@dataclass
class Frame:
    """One frame as the inspection driver scores it: where it came from, when, its pixels or its error."""

    source: str  # what the events call this frame's source (a path, a camera name)
    index: int  # position within its source
    captured: float  # wall-clock time (s since the epoch) when it was read or captured
    image: np.ndarray | None  # None when `error` is set
    error: str | None = None
    name: str | None = None  # file stem for this frame's saved map and overlay
    roi: tuple[int, int, int, int] | None = None  # (x, y, w, h) of the source's frame that `image` holds
    position_s: float | None = None  # a video file's frame: its place in the video (`captured` is when it was read)


def artifact_names(paths: list[Path], root: Path) -> dict[Path, str]:
    """A unique, safe file stem per image: its relative path with sub-folders joined by '__'.

    Where two images would share one (a.png and a.jpg, or x/y.png and x__y.png)
    they keep their suffix and, if still needed, a counter: no map overwrites
    another. Stems never start with '.', hold no undecodable bytes, and long ones
    are shortened with a hash of the full name.
    """
    names: dict[Path, str] = {}
    taken: set[str] = set()
    rel = [Path(display_path(p.relative_to(root))) for p in paths]
    stems = ["__".join(r.with_suffix("").parts) for r in rel]
    clashes = {s for s in stems if stems.count(s) > 1}
    for path, r, stem in zip(paths, rel, stems):
        name = "__".join(r.parts) if stem in clashes else stem
        name = "_" + name[1:] if name.startswith(".") else name
        limit = MAX_NAME_CHARS - 40  # room for a suffix, a counter and the temporary-file prefix
        if len(name.encode("utf-8")) > limit:
            digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
            name = name.encode("utf-8")[:limit - 13].decode("utf-8", "ignore") + "-" + digest
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names[path] = name
    return names


class ImageFiles:
    """Image files read lazily, in order; unreadable ones (and listed problems) as error frames."""

    def __init__(self, paths: list[Path], root: Path, problems: list[str] | None = None):
        self.folder = root
        self.paths = paths
        self.problems = problems or []
        self.names = artifact_names(self.paths, root)

    def __len__(self) -> int:
        return len(self.paths) + len(self.problems)

    def __iter__(self):
        index = 0
        for problem in self.problems:  # an unreadable sub-folder is reported, never skipped silently
            yield Frame(display_path(self.folder), index, time.time(), None, error=problem)
            index += 1
        for path in self.paths:
            try:
                image, error = read_image(path), None
            except ImageReadError as exc:
                image, error = None, str(exc)
            yield Frame(display_path(path), index, time.time(), image, error, self.names[path])
            index += 1


class FolderSource(ImageFiles):
    """Every image under a folder (recursively, sorted), read lazily; unreadable ones as error frames."""

    def __init__(self, folder: str | Path):
        paths, problems = list_images(folder)
        super().__init__(paths, Path(folder), problems)


def is_glob(text: str) -> bool:
    return any(c in text for c in GLOB_CHARS)


class GlobSource(ImageFiles):
    """The image files a glob pattern matches (`**` descends into sub-folders), sorted."""

    def __init__(self, pattern: str):
        parts = Path(pattern).parts
        fixed = parts[:next((i for i, p in enumerate(parts) if is_glob(p)), len(parts))]  # before any wildcard
        root = Path(*fixed) if fixed else Path(".")
        if root.is_file():  # a pattern without wildcards: one image file
            root = root.parent
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())
        super().__init__(paths, root)


def batched(frames, size: int):
    """Lists of up to `size` consecutive frames."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
