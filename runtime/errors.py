"""Error types shared by every command, and the one-line rendering of an exception."""

from __future__ import annotations


class BundleError(Exception):
    """A bundle (or a file it names) that cannot be used, with a one-line reason."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
