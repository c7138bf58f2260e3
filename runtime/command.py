"""What every winclip command shares: how messages reach people, and errors as one line.

Messages (progress notes, warnings) go through the standard `logging` module,
under the "winclip" logger: library code logs, and a command installs one
handler that writes them to stderr ("warning: ..." for warnings, in colour only
on a terminal). Long work shows a tqdm bar besides. An error of the project's
family (`WinclipError`) or of the OS ends a command with its one-line reason.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable

import click

from winclip.runtime.errors import WinclipError, first_line

LOGGER = "winclip"


class CliFormatter(logging.Formatter):
    """INFO as it is; WARNING and above prefixed ("warning: ...", "error: ..."), coloured on a terminal."""

    def __init__(self, color: bool = False):
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            return message
        text = f"{record.levelname.lower()}: {message}"
        return click.style(text, fg="yellow" if record.levelno == logging.WARNING else "red") if self.color else text


class CliHandler(logging.Handler):
    """Writes each message to the current stderr through tqdm, so that a progress bar on screen is
    redrawn below it instead of torn; `before_emit` runs first (the live loop's status line wipes itself)."""

    def __init__(self, before_emit: Callable[[], None] | None = None):
        super().__init__()
        self.before_emit = before_emit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if self.before_emit is not None:
                self.before_emit()
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        except Exception:  # a closed stderr must not take the command down
            self.handleError(record)


def setup_logging(before_emit: Callable[[], None] | None = None, level: int = logging.INFO) -> CliHandler:
    """Route the project's messages (and Python warnings) to stderr for a command; returns the handler."""
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if isinstance(h, CliHandler)]:
        logger.removeHandler(old)
    handler = CliHandler(before_emit)
    handler.setFormatter(CliFormatter(color=_is_terminal(sys.stderr)))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logging.captureWarnings(True)  # a library's warnings.warn(...) is a warning line too
    warnings_logger = logging.getLogger("py.warnings")
    if handler not in warnings_logger.handlers:
        warnings_logger.handlers = [handler]
        warnings_logger.propagate = False
    return handler


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def one_line_errors(what: str | None = None):
    """Turn the project's errors and OS errors into click's one-line, non-zero exit."""
    try:
        yield
    except click.ClickException:
        raise
    except (WinclipError, OSError) as exc:
        raise click.ClickException(f"{what}: {first_line(exc)}" if what else first_line(exc)) from None


def require_onnxruntime() -> None:
    """Exit with the install command when no ONNX Runtime is installed (after --help was handled)."""
    try:
        import onnxruntime  # noqa: F401  (from the [cpu] or [gpu] extra, never both)
    except ImportError:
        raise click.ClickException("onnxruntime is not installed: pip install 'winclip-edge[cpu]' "
                                   "(or [gpu] on a CUDA box)") from None
