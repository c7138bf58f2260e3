"""Reading a file that a stranger may have named: regular files only, and never more bytes than a cap.

A FIFO among the images would hang a read forever, a symlink to /dev/zero would
never end, and a multi-GB "image" would fill memory before any decoder looks at
it. Every file the project reads on a user's or a bundle's say-so comes through
here: its kind is checked with `stat` (after symlinks), its size against a cap,
and at most cap + 1 bytes are read even if it grows meanwhile.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from winclip.runtime.errors import WinclipError

KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


class FileRefused(WinclipError):
    """A file that is not a regular file, or larger than what may be read; `reason` says why without the path."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def not_regular(path: str | Path) -> str | None:
    """Why `path` is not a regular file (following symlinks), in words; None when it is one."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return f"it is {KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file"


def read_regular(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; FileRefused or OSError otherwise."""
    name = os.fsdecode(path)
    problem = not_regular(path)
    if problem:
        raise FileRefused(f"{what} {name}: {problem}", problem)
    size = os.stat(path).st_size
    if size > limit:
        reason = f"{size:,} bytes, more than the {limit:,} allowed"
        raise FileRefused(f"{what} {name} is {reason}", reason)
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        reason = f"grew past the {limit:,} bytes allowed while it was read"
        raise FileRefused(f"{what} {name} {reason}", reason)
    return data
