"""`winclip-quantize`: add an int8 (CPU: ONNX Runtime or OpenVINO) or fp16 (CUDA) engine to a bundle,
guarded on real frames."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from winclip.calibration.engines import BUILDERS
from winclip.calibration.engines.guard import GuardLimits
from winclip.calibration.engines.int8 import QUANT_FORMATS, QUANT_METHODS, Int8Settings
from winclip.calibration.engines.openvino_int8 import IGNORE_SCOPES, PRESETS, NncfSettings
from winclip.runtime.command import CONTEXT, Command, Finite, Whole, one_line_errors, setup_logging

log = logging.getLogger("winclip.quantize")  # not __name__: run as a script, that is "__main__"
DEFAULT = Int8Settings()
NNCF = NncfSettings()
LIMITS = GuardLimits()
# (backend, precision) -> the builder's settings from the command's options (builders without knobs: defaults)
SETTINGS = {
    ("onnxruntime", "int8"): lambda o: Int8Settings(
        method=o["method"], per_channel=o["per_channel"], reduce_range=o["reduce_range"],
        quant_format=o["quant_format"], quantize_attention=o["quantize_attention"], fp32_blocks=o["fp32_blocks"],
        calibration_frames=o["calibration_frames"] or DEFAULT.calibration_frames),
    ("openvino", "int8"): lambda o: NncfSettings(
        calibration_frames=o["calibration_frames"] or NNCF.calibration_frames, per_channel=o["per_channel"],
        smooth_quant_alpha=o["smooth_quant_alpha"], ignore=tuple(o["keep_float"]), preset=o["preset"],
        overflow_fix=None if o["reduce_range"] is None else ("enable" if o["reduce_range"] else "first_layer_only")),
}


def _blocks(ctx, param, value: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(b) for b in value.split(",") if b.strip())
    except ValueError:
        raise click.BadParameter(f"expected block numbers like 1,12, got {value!r}") from None
    if any(b < 1 for b in blocks):
        raise click.BadParameter("block numbers start at 1")
    return blocks


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
@click.option("--backend", type=click.Choice(tuple(dict.fromkeys(b for b, _ in BUILDERS))), default="onnxruntime",
              help="Whose engine to make: onnxruntime (an ONNX graph) or openvino (an IR made with NNCF, "
                   "the openvino extra).")
@click.option("--images", "--calibration", "images", type=click.Path(path_type=Path), required=True,
              help="Folder of the line's real frames: held-out frames for the accuracy guard, and "
                   "calibration frames for static int8.")
@click.option("--method", type=click.Choice(QUANT_METHODS), default=DEFAULT.method,
              help="int8: dynamic (activation ranges per frame) or static (from calibration frames).")
@click.option("--per-channel/--per-tensor", default=DEFAULT.per_channel, help="int8 weight scales.")
@click.option("--reduce-range/--full-range", default=None,
              help="7-bit or 8-bit int8 weights (ONNX Runtime; for OpenVINO: NNCF's overflow fix on every layer, "
                   "or on the first only). CPUs without VNNI (AVX2 only) saturate on full-range weights. "
                   "[default: full-range where this CPU has VNNI or ARM dot product, else 7-bit]")
@click.option("--format", "quant_format", type=click.Choice(QUANT_FORMATS), default=DEFAULT.quant_format,
              help="Static int8 graph format.")
@click.option("--quantize-attention", is_flag=True, help="Also quantise attention's activation x activation products.")
@click.option("--fp32-blocks", default="", callback=_blocks, help="Transformer blocks (1-based) to keep in fp32, e.g. 1,12.")
@click.option("--calibration-frames", type=Whole(1, 10_000), default=None,
              help=f"Static int8 and OpenVINO int8: frames the activation ranges come from. "
                   f"[default: {DEFAULT.calibration_frames}]")
@click.option("--smooth-quant-alpha", type=Finite(-1.0, 1.0), default=None,
              help="OpenVINO int8: SmoothQuant alpha for the MatMuls (negative: off). [default: NNCF's]")
@click.option("--keep-float", type=click.Choice(tuple(IGNORE_SCOPES)), multiple=True,
              help="OpenVINO int8: keep this part in floating point; repeatable.")
@click.option("--preset", type=click.Choice(PRESETS), default=NNCF.preset,
              help="OpenVINO int8: symmetric (performance) or asymmetric (mixed) activations.")
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
def main(bundle, precision, backend, images, method, per_channel, reduce_range, quant_format, quantize_attention,
         fp32_blocks, calibration_frames, smooth_quant_alpha, keep_float, preset, holdout, seed, object_name,
         min_map_pearson_median, min_map_pearson, min_score_spearman, min_embedding_cosine, accept_degraded, force):
    """Add an int8 or fp16 engine to BUNDLE, made from its fp32 engine without torch.

    Before the engine is added it runs beside fp32 on frames of --images that it
    was not calibrated on, zero-shot and few-shot, and must keep the anomaly
    maps, image scores and embeddings (see the --min-* limits). The bundle is
    changed atomically, or not at all.
    """
    from winclip.calibration.engines.build import add_engine

    setup_logging()
    options = dict(method=method, per_channel=per_channel, reduce_range=reduce_range, quant_format=quant_format,
                   quantize_attention=quantize_attention, fp32_blocks=fp32_blocks, calibration_frames=calibration_frames,
                   smooth_quant_alpha=smooth_quant_alpha, keep_float=keep_float, preset=preset)
    make_settings = SETTINGS.get((backend, precision))
    settings = make_settings(options) if make_settings else None
    limits = GuardLimits(map_pearson_median=min_map_pearson_median, map_pearson_min=min_map_pearson,
                         score_spearman=min_score_spearman, embedding_cosine_min=min_embedding_cosine)
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
