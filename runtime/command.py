"""What every winclip command shares: how messages reach people, errors as one line, checked numbers.

Messages (progress notes, warnings) go through the standard `logging` module,
under the "winclip" logger: library code logs, and a command installs one
handler that writes them to stderr ("warning: ..." for warnings, in colour only
on a terminal). Long work shows a tqdm bar besides. Every command is a
`Command` (or `Group`): an error of the project's family (`WinclipError`) or of
the OS ends it with its one-line reason, never a traceback. Numeric options use
`Finite` / `Whole`, so a NaN, an infinity or an absurd count is refused when the
command line is read, with the range shown in --help.
"""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from typing import Callable

import click

from winclip.runtime.errors import WinclipError, first_line

LOGGER = "winclip"
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}  # every command's click settings
SHOWN_SKIPPED = 5  # skipped items listed one by one before the rest are summarised in one line


class Command(click.Command):
    """A click command whose run ends with one line for any error of ours or of the OS."""

    def invoke(self, ctx):
        with one_line_errors():
            return super().invoke(ctx)


class Group(click.Group):
    """A click group whose commands end with one line for any error of ours or of the OS."""

    command_class = Command

    def invoke(self, ctx):
        with one_line_errors():
            return super().invoke(ctx)


class Finite(click.FloatRange):
    """A float option in a range, refusing NaN and infinities (FloatRange alone lets NaN through)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class BackendChoice(click.Choice):
    """--backend's choices: the rows of the backend table when the command line is read (not when the module
    was imported), so a row added later (a plug-in, a test's fake backend) is a choice like the others."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self):
        from winclip.runtime.backends import BACKENDS

        return tuple(BACKENDS)

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ sets it; the table is the one source
        pass


def backend_options(parse: Callable | None = None, help_more: str = ""):
    """--backend and --remeasure, the same for every command that runs a bundle's engine.

    The default is `auto` where more than one local backend is installed (ONNX Runtime
    and OpenVINO): the first start measures them on this machine, a few seconds, said
    once on stderr; later starts reuse the choice. `parse`: a click callback for a
    command that takes several backends (winclip-bench: a comma-separated list).
    """
    from winclip.runtime.backends import default_backend

    def decorate(f):
        f = click.option("--remeasure", is_flag=True,
                         help="With backend auto: measure the local backends again instead of reusing the choice "
                              "remembered for this engine, library, CPU and settings.")(f)
        kind = {"callback": parse} if parse else {"type": BackendChoice()}
        return click.option("--backend", "backend", default=default_backend, **kind,
                            show_default="auto where ONNX Runtime and OpenVINO are both installed, else onnxruntime",
                            help="Inference backend; auto times the installed local ones on this machine (interleaved "
                                 "rounds, about 10 s on a quiet box) and runs the fastest, remembered with the load "
                                 f"it was measured under.{help_more}")(f)

    return decorate


def engine_options(precision_help: str = "Engine to run: auto = fp16 on CUDA, a guarded int8 on CPU, else fp32.",
                   parse: Callable | None = None, help_more: str = ""):
    """Every option that says how a command opens a bundle's engine, the same in every command that runs one:
    --backend and --remeasure (backend_options), --provider/--device, --precision, --threads and
    --inference-precision. The command gets them as parameters of those names and builds its BackendOptions
    with `engine_choice`."""
    from winclip.runtime.defaults import PRECISIONS

    def decorate(f):
        f = click.option("--inference-precision", type=click.Choice(("f32", "bf16")), default=None,
                         help="OpenVINO: the compute precision of an fp32 engine (bf16 where the CPU has it). "
                              "[default: f32]")(f)
        f = click.option("--threads", type=Whole(1, 1024), default=None,
                         help="The backend's intra-op threads. [default: all cores]")(f)
        f = click.option("--precision", type=click.Choice(("auto", *PRECISIONS)), default="auto",
                         help=precision_help)(f)
        f = backend_options(parse, help_more)(f)
        from winclip.runtime.defaults import PROVIDERS

        return click.option("--provider", "--device", "provider", default="auto",
                            help=f"What the backend runs on: onnxruntime {'|'.join(PROVIDERS)}; openvino CPU|GPU|NPU "
                                 "(any device name OpenVINO has).")(f)

    return decorate


def engine_choice(provider: str = "auto", precision: str = "auto", threads: int | None = None,
                  remeasure: bool = False, inference_precision: str | None = None, **more):
    """The BackendOptions of engine_options' parameters (`more`: further BackendOptions fields, e.g. cache)."""
    from winclip.runtime.backends import BackendOptions

    return BackendOptions(device=provider, precision=precision, threads=threads, remeasure=remeasure,
                          inference_precision=inference_precision, **more)


def engine_choice_of(values: dict, **more):
    """engine_choice of a command that takes its options as one mapping (`**values`, by parameter name)."""
    return engine_choice(values["provider"], values["precision"], values["threads"], values["remeasure"],
                         values["inference_precision"], **more)


def Whole(lo: int, hi: int) -> click.IntRange:  # noqa: N802  (reads as a type, like click.IntRange)
    """A whole-number option from lo to hi: an upper bound on every count keeps absurd values out."""
    return click.IntRange(lo, hi)


def log_skipped(logger: logging.Logger, what: str, lines: list[str], shown: int = SHOWN_SKIPPED) -> None:
    """One warning per skipped item for the first few, then one line for the rest (never thousands of lines)."""
    for line in lines[:shown]:
        logger.warning("skipped (%s): %s", what, line)
    if len(lines) > shown:
        logger.warning("skipped (%s): %d more like these", what, len(lines) - shown)


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


def progress_bar(total: int | None, what: str, unit: str = "img"):
    """A tqdm bar with a rate and an ETA on stderr, its count said first in a line of its own ("scoring 120
    images"). It shows in a pipe too (tee, a service's log), redrawn every 10 s there, twice a second on a
    terminal: a long run is never silent."""
    from tqdm import tqdm

    if total is not None:
        logging.getLogger(LOGGER).info("%s %d %s", what, total, {"img": "images"}.get(unit, unit))
    terminal = _is_terminal(sys.stderr)
    return tqdm(total=total, desc=what, unit=unit, file=sys.stderr, disable=False, mininterval=0.5 if terminal else 10.0,
                dynamic_ncols=terminal)


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
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (WinclipError, OSError) as exc:
        raise click.ClickException(f"{what}: {first_line(exc)}" if what else first_line(exc)) from None

