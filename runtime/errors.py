"""The project's error family, and the one-line rendering of an exception.

Every error winclip-edge raises on purpose derives from `WinclipError`, so a
command (or a program using the API) can catch the whole family in one place
and print its one-line reason; anything else is a bug or an OS error.
"""

from __future__ import annotations


class WinclipError(Exception):
    """Base of every winclip-edge error: something that cannot go ahead, with a one-line reason."""


class BundleError(WinclipError):
    """A bundle (or a file it names) that cannot be used, with a one-line reason."""


class SettingError(WinclipError, ValueError):
    """A setting given through the API or a file (a threshold, a temperature) that is out of its range."""


class EngineUnavailable(WinclipError):
    """A served engine that cannot be reached now; its backend reconnects with backoff on the next call."""


class MissingExtra(WinclipError, ImportError):
    """An optional dependency that is not installed; the message names the extra that brings it."""


def install_hint(extras: str) -> str:
    """How to install an extra: winclip-edge is installed from its source folder (it is not on PyPI)."""
    return f'pip install ".[{extras}]" in the winclip-edge source folder'


def short_repr(value: object) -> str:
    """A value as an error message quotes it: its repr, cut after about 20 characters."""
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "..."


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
