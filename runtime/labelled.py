"""The labelled-folder layout, stated once: what `winclip-calibrate --labelled` and `winclip-eval --layout folder`
read, and what the review desk of the live page writes into `<profile>/labelled/`.

    labelled/
      good/            normal parts
      <defect kind>/   one folder per kind of defect (every other sub-folder)
      masks/<kind>/    optional defect masks (pixel metrics)
      reference/       optional normal images for the few-shot memory, never tested

Hidden sub-folders (a leading '.') are ignored by the readers.
"""

from __future__ import annotations

import re

from winclip.runtime.errors import WinclipError

GOOD, MASKS, REFERENCE = "good", "masks", "reference"
RESERVED = (GOOD, MASKS, REFERENCE)  # every other sub-folder of a labelled folder is a defect kind
LABELLED_FOLDER = "labelled"  # inside a line profile's folder: the line's own test set
KIND_CHARS = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


class LabelError(WinclipError):
    """A label that cannot be written as asked, with a one-line reason."""


def defect_kind(name: str) -> str:
    """A defect kind as a folder name: lower case letters, digits, '_' and '-' (spaces become '_'), 1-48
    characters, and never one of the reserved folders."""
    kind = re.sub(r"\s+", "_", str(name or "").strip().lower())
    if not KIND_CHARS.fullmatch(kind):
        raise LabelError("a defect kind is 1-48 letters, digits, '_' or '-' (for example: scratch, hole, stain)")
    if kind in RESERVED:
        raise LabelError(f"'{kind}' is not a defect kind: {', '.join(RESERVED)} are reserved folder names")
    return kind
