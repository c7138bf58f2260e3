"""The k normal images a WinCLIP+ reference memory is built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from winclip.runtime.images import ImageReadError, list_images, read_image


class ReferenceSetError(ValueError):
    """A reference set that cannot be used, with a one-line reason."""


def load_reference_images(folder: str | Path, shots: int | None = None) -> list[np.ndarray]:
    """The first `shots` images of a folder, sorted by path (all of them when None).

    Every one must decode: a memory built from a partly unreadable set would
    silently be a different K than the one asked for.
    """
    if shots is not None and shots < 1:
        raise ReferenceSetError(f"shots must be >= 1, got {shots}")
    try:
        paths = list_images(folder)
    except ImageReadError as exc:
        raise ReferenceSetError(str(exc)) from None
    wanted = shots if shots is not None else max(len(paths), 1)
    if len(paths) < wanted:
        raise ReferenceSetError(f"reference folder {folder} has {len(paths)} images, fewer than the {wanted} asked for")
    try:
        return [read_image(p) for p in paths[:wanted]]
    except ImageReadError as exc:
        raise ReferenceSetError(f"reference image unusable: {exc}") from None
