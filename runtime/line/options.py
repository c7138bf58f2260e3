"""From option values to a run's plan: what `winclip-inspect`'s command line and a station file share.

The command line (cli.py) and a station file (station.py) hand their values, by
the command's parameter names, to the same functions here: one set of checks
and defaults for both, and one way to open the engine a run shares.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import fields

import click

from winclip.runtime.command import engine_choice, one_line_errors, setup_logging
from winclip.runtime.errors import first_line
from winclip.runtime.line.plan import OutputPlan, PartPlan, RunLimits
from winclip.runtime.line.sinks import SINKS

log = logging.getLogger("winclip.inspect")

SINK_OPTIONS = tuple(option for kind in SINKS.values() for option in kind.options)
LOCK_NAME = ".winclip-inspect.lock"

def _option_names(options) -> tuple[str, ...]:
    """The parameter names click gives a list of option decorators."""
    def holder():
        pass

    for option in options:
        holder = option(holder)
    return tuple(param.name for param in holder.__click_params__)


SINK_OPTION_NAMES = _option_names(SINK_OPTIONS)


def given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sink_options(command):
    """Add every sink kind's options (in table order) to the command."""
    for option in reversed(SINK_OPTIONS):
        command = option(command)
    return command


def sink_values_of(values: dict) -> dict:
    """The sink table's options, by name, from the command's values."""
    return {name: values[name] for name in SINK_OPTION_NAMES}


def part_plan(values: dict) -> PartPlan:
    """How frames are judged: the command line's (every --source alike), or one station camera's (a key it
    leaves out is None). PartPlan's fields are the parameters of the same names."""
    if values.get("profile") is not None and values.get("normal_dir") is not None:
        raise click.UsageError("--profile brings its own few-shot memory; leave out --normal")
    return PartPlan(**{f.name: values.get(f.name) for f in fields(PartPlan)})


def run_limits(values: dict) -> RunLimits:
    return RunLimits(values["every"], values["max_frames"], values["duration"], values["wait_for_source"],
                     values["stall_timeout"], values["flush_timeout"])


def engine_plan(values: dict, wait: bool):
    """The engine options (BackendOptions) and backend name the values ask for; the chosen backend's library
    is checked first, named with its extra when missing."""
    if values["engine_address"] is None:  # a served engine runs elsewhere: this box needs no local library
        from winclip.runtime.backends import backend_class

        backend_class(values["backend"])
    import os

    if values["max_pixels"] is not None:
        os.environ["WINCLIP_MAX_PIXELS"] = str(values["max_pixels"])
    setup_logging()
    options = engine_choice(values["provider"], values["precision"], values["threads"], values["remeasure"],
                            values["inference_precision"], cache=not values["no_cache"],
                            endpoint=values["engine_address"], wait=wait)
    return values["backend"], options


@contextlib.contextmanager
def output_lock(out):
    """One run at a time per --out: a second one is refused in one line that names the first."""
    if out is None:
        yield
        return
    from winclip.runtime.locks import writer_lock

    with one_line_errors(f"cannot write to {out}"):
        out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out / LOCK_NAME, f"the output folder {out}"):  # a refusal: one line, as every error
        yield


def load_engine(bundle, part: PartPlan, engine: tuple, temperature: float | None, build_memory: bool = True):
    """The detector whose session the run shares: the bundle on the chosen backend, set up for `part`
    (its few-shot memory from normal images only when `build_memory`: a live run's parts build their own)."""
    from winclip.runtime.detector import Detector
    from winclip.runtime.images import read_image_folder

    backend, options = engine
    with one_line_errors():
        try:
            detector = Detector.from_bundle(bundle, object=part.object_name, profile=part.profile, options=options,
                                            backend=backend, temperature=temperature, threshold=part.threshold,
                                            pixel_threshold=part.pixel_threshold)
            if part.normal_dir is not None and build_memory:
                normals = read_image_folder(part.normal_dir, part.shots)
                detector.build_memory(normals)
                log.info("WinCLIP+ memory from %d normal images", len(normals))
        except ValueError as exc:
            raise click.ClickException(first_line(exc)) from None
    log.info("%s: %s", bundle, detector.describe())
    return detector


def check_engine_options(ctx, values: dict) -> None:
    """A served engine (--engine) refuses the options of an engine run here."""
    if values["engine_address"] is not None:
        local = [n for n in ("backend", "provider", "threads", "inference_precision", "no_cache") if given(ctx, n)]
        if local:
            raise click.UsageError(f"{flag(local[0])} applies to an engine run here, not to --engine "
                                   f"{values['engine_address']}")


def output_plan(ctx, values: dict, sink_values: dict, elsewhere: bool = False) -> OutputPlan:
    """Check the live output options against each other before anything slow starts; where results go.
    `elsewhere`: every camera sends its events to sinks of its own (a station), so the run needs none."""
    out, overlays, serve = values["out"], values["overlays"], values["serve"]
    somewhere = any(sink_values.get(kind.primary) for kind in SINKS.values())
    if out is None and serve is None and not elsewhere and not somewhere:
        flags = ", ".join(flag(kind.primary) for kind in SINKS.values())
        raise click.UsageError(f"a live run needs somewhere to put its results: --out, {flags} or --serve")
    if overlays not in (None, "none") and out is None:
        raise click.UsageError(f"--overlays {overlays} saves into OUT/overlays: give --out")
    for name in ("keep_days", "keep_gb"):
        if given(ctx, name) and (out is None or overlays == "none"):
            raise click.UsageError(f"{flag(name)} prunes the overlays saved in OUT/overlays: give --out")
    for name, needs in [(n, k.requires[n]) for k in SINKS.values() for n in k.requires]:
        if given(ctx, name) and sink_values.get(needs) is None:
            raise click.UsageError(f"{flag(name)} needs {flag(needs)}")
    if given(ctx, "host") and serve is None:
        raise click.UsageError("--host needs --serve PORT")
    sinks = {name: kind.plan(sink_values, out) for name, kind in SINKS.items()}
    return OutputPlan(out, {name: plan for name, plan in sinks.items() if plan is not None}, sink_values,
                      overlays or ("anomalous" if out is not None else "none"), values["keep_days"], values["keep_gb"],
                      serve, values["host"], _operator_token(ctx, serve, values["operator_token_file"]))


def _operator_token(ctx, serve, token_file):
    """The page's operator tokens (from --operator-token-file or the environment), checked before anything slow."""
    from winclip.runtime.line.access import load_token

    if serve is None:
        if given(ctx, "operator_token_file"):
            raise click.UsageError("--operator-token-file needs --serve PORT")
        return None
    return load_token(token_file)  # a TokenError ends the command in one line (Command)
