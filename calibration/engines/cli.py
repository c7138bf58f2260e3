"""`winclip-quantize`: add a reduced-precision engine to a bundle (int8 for the CPU on ONNX Runtime or OpenVINO,
fp16 for CUDA), guarded on real frames. The builders' table (BUILDERS) brings the engines it can make and
each builder's own options."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from winclip.calibration.engines import BUILDERS
from winclip.calibration.engines.base import collect_options
from winclip.calibration.engines.guard import GuardLimits
from winclip.runtime.backends import DEFAULT_BACKEND
from winclip.runtime.command import CONTEXT, Command, Finite, Whole, one_line_errors, setup_logging

log = logging.getLogger("winclip.quantize")  # not __name__: run as a script, that is "__main__"
LIMITS = GuardLimits()
# --min-* option -> the GuardLimits field it sets
LIMIT_OPTIONS = {"min_map_pearson_median": "map_pearson_median", "min_map_pearson": "map_pearson_min",
                 "min_score_spearman": "score_spearman", "min_embedding_cosine": "embedding_cosine_min"}


def _builder_options(command):
    """Add every builder's options (in table order, each once) to the command."""
    for option in reversed(collect_options(BUILDERS.values())):
        command = option(command)
    return command


def _offered() -> str:
    """Which backend's builders make which precisions, and the extra that brings their tools (for --help)."""
    by_backend: dict[str, list] = {}
    for builder in BUILDERS.values():
        by_backend.setdefault(builder.backend, []).append(builder)
    return "; ".join(f"{backend} {', '.join(b.precision for b in builders)} (the "
                     f"{' and '.join(dict.fromkeys(b.extra for b in builders))} extra)"
                     for backend, builders in by_backend.items())


def guard_table(report: dict) -> str:
    """The guard's numbers as a small markdown table."""
    rows = ["| mode | map Pearson median | map Pearson min | score Spearman | max score diff | max map diff |",
            "|---|---|---|---|---|---|"]
    for mode, n in report["modes"].items():
        rows.append(f"| {mode} | {n['map_pearson_median']:.4f} | {n['map_pearson_min']:.4f} | "
                    f"{n['score_spearman']:.4f} | {n['score_max_abs_diff']:.2e} | {n['map_max_abs_diff']:.2e} |")
    cos = ", ".join(f"{k} {v:.4f}" for k, v in report["embedding_cosine_min"].items())
    compute = f"\nguarded at {report['compute']} compute" if report.get("compute") else ""
    return "\n".join(rows) + f"\nembedding cosine (min): {cos}" + compute


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(tuple(dict.fromkeys(p for _, p in BUILDERS))), required=True,
              help="int8: for the CPU; fp16: for CUDA (ONNX Runtime).")
@click.option("--backend", type=click.Choice(tuple(dict.fromkeys(b for b, _ in BUILDERS))), default=DEFAULT_BACKEND,
              help=f"Whose engine to make: {_offered()}.")
@click.option("--images", "--calibration", "images", type=click.Path(path_type=Path), required=True,
              help="Folder of the line's real frames: held-out frames for the accuracy guard, and "
                   "calibration frames for static int8.")
@_builder_options
@click.option("--holdout", type=Whole(2, 10_000), default=6, help="Frames held out for the accuracy guard.")
@click.option("--seed", type=Whole(0, 2**32 - 1), default=0, help="Seed of the split into held-out and calibration frames.")
@click.option("--object", "object_name", default=None, help="Object whose text prototypes the guard scores with. [default: the first]")
@click.option("--min-map-pearson-median", type=Finite(0.0, 1.0), default=LIMITS.map_pearson_median,
              help="Guard: median per-frame map correlation with fp32.")
@click.option("--min-map-pearson", type=Finite(0.0, 1.0), default=LIMITS.map_pearson_min,
              help="Guard: lowest per-frame map correlation with fp32.")
@click.option("--min-score-spearman", type=Finite(0.0, 1.0), default=LIMITS.score_spearman,
              help="Guard: rank correlation of image scores with fp32.")
@click.option("--min-embedding-cosine", type=Finite(0.0, 1.0), default=LIMITS.embedding_cosine_min,
              help="Guard: lowest cosine of any embedding with its fp32 twin, per output.")
@click.option("--accept-degraded", is_flag=True,
              help="Add the engine even if it fails the guard (recorded in the manifest, warned about at every load).")
@click.option("--force", is_flag=True, help="Replace an engine of the same precision.")
def main(bundle, precision, backend, images, holdout, seed, object_name, accept_degraded, force, **values):
    """Add an int8 or fp16 engine to BUNDLE, made from its fp32 engine without torch.

    Before the engine is added it runs beside fp32 on frames of --images that it
    was not calibrated on, zero-shot and few-shot, and must keep the anomaly
    maps, image scores and embeddings (see the --min-* limits). The bundle is
    changed atomically, or not at all.
    """
    from winclip.calibration.engines.build import add_engine

    setup_logging()
    limits = GuardLimits(**{field: values.pop(option) for option, field in LIMIT_OPTIONS.items()})
    builder = BUILDERS.get((backend, precision))
    settings = builder.settings(values) if builder is not None else None  # none: add_engine says what there is
    with one_line_errors():
        engine = add_engine(bundle, precision, images, backend=backend, object_name=object_name, settings=settings,
                            holdout=holdout, seed=seed, limits=limits, accept_degraded=accept_degraded, force=force)
    click.echo(guard_table(engine.guard), err=True)
    if engine.accepted_degraded:
        log.warning("the %s engine FAILED its guard and was added because of --accept-degraded: %s",
                    precision, "; ".join(engine.guard["failures"]))
    size = sum((Path(bundle) / ref.file).stat().st_size for ref in engine.files()) / 2**20
    click.echo(f"added {engine.file} ({engine.label}, {size:.0f} MiB) to {bundle}")


if __name__ == "__main__":
    sys.exit(main())
