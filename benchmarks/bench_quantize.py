"""int8 variants of one bundle side by side: engine time per frame and the accuracy guard's numbers.

Makes each variant from the bundle's fp32 engine in a scratch copy (the bundle itself is not
changed; the copy hard-links the fp32 graph), times the fp32 engine and every variant on the
same frame, and prints a markdown table; the defaults of winclip-quantize come from such runs.
ONNX Runtime variants (dynamic / static, weight range, blocks kept fp32) and OpenVINO NNCF
variants (scopes kept float, SmoothQuant alpha, per-channel, calibration frames) are rows of
one table, with the CPU they ran on. Speed rows are only comparable within one quiet run;
the guard's numbers do not depend on load.

    python -m winclip.benchmarks.bench_quantize BUNDLE --images DIR [--backend openvino] [--only NAME] [--out rows.json]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from winclip.calibration.engines.int8 import Int8Settings
from winclip.calibration.engines.openvino_int8 import NncfSettings
from winclip.runtime.command import CONTEXT, Command, Whole
from winclip.runtime.defaults import GUARD_LIMITS

# the embedding cosine the guard's defaults hold engines to (one of the limits it enforces)
MIN_EMBEDDING_COSINE = GUARD_LIMITS["embedding_cosine_min"]

VARIANTS = {
    "ort dynamic, per-channel, 7-bit": ("onnxruntime", Int8Settings(reduce_range=True)),
    "ort dynamic, per-tensor, 7-bit": ("onnxruntime", Int8Settings(per_channel=False, reduce_range=True)),
    "ort dynamic, per-channel, 8-bit": ("onnxruntime", Int8Settings(reduce_range=False)),
    "ort dynamic, per-channel, 7-bit, attention too": ("onnxruntime", Int8Settings(quantize_attention=True,
                                                                                   reduce_range=True)),
    "ort dynamic, per-channel, 7-bit, first+last block fp32": ("onnxruntime", Int8Settings(fp32_blocks=(1, -1),
                                                                                           reduce_range=True)),
    "ort static QOperator, per-channel, 7-bit": ("onnxruntime", Int8Settings(method="static", quant_format="qoperator",
                                                                             reduce_range=True)),
    "ort static QDQ, per-channel, 7-bit": ("onnxruntime", Int8Settings(method="static", quant_format="qdq",
                                                                       reduce_range=True)),
    "ov NNCF, 8 frames (default)": ("openvino", NncfSettings()),
    "ov NNCF, patch features float": ("openvino", NncfSettings(ignore=("patch-features",))),
    "ov NNCF, last block float": ("openvino", NncfSettings(ignore=("last-block",))),
    "ov NNCF, attention float": ("openvino", NncfSettings(ignore=("attention",))),
    "ov NNCF, SmoothQuant off": ("openvino", NncfSettings(smooth_quant_alpha=-1.0)),
    "ov NNCF, SmoothQuant 0.5": ("openvino", NncfSettings(smooth_quant_alpha=0.5)),
    "ov NNCF, per-tensor": ("openvino", NncfSettings(per_channel=False)),
    "ov NNCF, 16 frames": ("openvino", NncfSettings(calibration_frames=16)),
    "ov NNCF, mixed preset": ("openvino", NncfSettings(preset="mixed")),
    "ov NNCF, patch features + last block float": ("openvino", NncfSettings(ignore=("patch-features", "last-block"))),
}
# the fp32 engine on each backend, at each compute precision: speed only (no guard: nothing was made)
FP32_ROWS = {"ort fp32": ("onnxruntime", None), "ov fp32, f32 compute": ("openvino", "f32"),
             "ov fp32, bf16 compute": ("openvino", "bf16")}


def engine_seconds(bundle: Path, backend: str, precision: str, frame, repeats: int,
                   inference_precision: str | None = None) -> float:
    """Median engine time (s) of one frame, after one untimed frame."""
    from winclip.runtime.backends import BackendOptions, open_backend
    from winclip.runtime.backends.auto import measure
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.preprocess import Preprocessor

    b = Bundle.load(bundle)
    runner = open_backend(b, backend, BackendOptions(device="cpu", precision=precision, cache=False,
                                                     inference_precision=inference_precision))
    seconds = measure(runner, Preprocessor(b.manifest.preprocess)([frame]), repeats)
    runner.close()
    return seconds


def scratch_copy(bundle: Path, into: Path) -> Path:
    """A copy of the bundle whose big files are hard links (a new engine never writes into them)."""
    try:
        return Path(shutil.copytree(bundle, into, copy_function=os.link))
    except OSError:
        return Path(shutil.copytree(bundle, into))


def variant_row(bundle: Path, images: Path, name: str, backend: str, settings, layers: int, frame, repeats: int) -> dict:
    from winclip.calibration.engines.build import add_engine

    if getattr(settings, "fp32_blocks", None):
        settings.fp32_blocks = tuple(layers if b == -1 else b for b in settings.fp32_blocks)
    with tempfile.TemporaryDirectory() as tmp:
        copy = scratch_copy(bundle, Path(tmp) / "bundle")
        t = time.perf_counter()
        engine = add_engine(copy, "int8", images, backend=backend, settings=settings, accept_degraded=True)
        made_s = time.perf_counter() - t
        seconds = engine_seconds(copy, backend, "int8", frame, repeats)
        size = sum((copy / ref.file).stat().st_size for ref in engine.files()) / 2**20
    g = engine.guard
    cosine = min(g["embedding_cosine_min"].values())
    return {"variant": name, "backend": backend, "settings": engine.made_by["settings"], "engine_s": seconds,
            "made_s": made_s, "mib": size, "passed": g["passed"], "failures": g["failures"], "modes": g["modes"],
            "embedding_cosine_min": g["embedding_cosine_min"], "cosine_min": cosine,
            "passes_with_cosine": g["passed"] and cosine >= MIN_EMBEDDING_COSINE}


def table(rows: list[dict], machine: str) -> str:
    base = next((r["engine_s"] for r in rows if r["variant"] == "ort fp32"), None)
    lines = [f"CPU: {machine}", "",
             "| variant | engine s/frame | x ort fp32 | MiB | guard (maps, scores) | embedding cos min | "
             f"guard + cos >= {MIN_EMBEDDING_COSINE} | zero-shot map r (median/min) | few-shot map r (median/min) | "
             "score rho (0/few) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{base / r['engine_s']:.2f}" if base else "-"
        if "modes" not in r:
            lines.append(f"| {r['variant']} | {r['engine_s']:.2f} | {speed} | | | | | | | |")
            continue
        z, f = r["modes"]["zero-shot"], r["modes"]["few-shot"]
        lines.append(f"| {r['variant']} | {r['engine_s']:.2f} | {speed} | {r['mib']:.0f} | "
                     f"{'pass' if r['passed'] else 'FAIL'} | {r['cosine_min']:.4f} | "
                     f"{'pass' if r['passes_with_cosine'] else 'FAIL'} | "
                     f"{z['map_pearson_median']:.4f}/{z['map_pearson_min']:.4f} | "
                     f"{f['map_pearson_median']:.4f}/{f['map_pearson_min']:.4f} | "
                     f"{z['score_spearman']:.3f}/{f['score_spearman']:.3f} |")
    return "\n".join(lines)


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Real frames for the guard and calibration.")
@click.option("--repeats", type=Whole(1, 1000), default=3, help="Timed frames per engine.")
@click.option("--backend", "backends", multiple=True, type=click.Choice(("onnxruntime", "openvino")),
              help="Only the variants of this backend; repeatable. [default: both]")
@click.option("--only", multiple=True, help="Run only the variants whose name contains this; repeatable.")
@click.option("--no-fp32", is_flag=True, help="Skip the fp32 speed rows.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the rows as JSON here.")
def main(bundle, images, repeats, backends, only, no_fp32, out):
    """Time and guard int8 variants of BUNDLE's fp32 engine (ONNX Runtime and OpenVINO)."""
    from winclip.runtime import cpu
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.errors import WinclipError
    from winclip.runtime.images import list_images, read_image

    layers = Bundle.load(bundle).manifest.layers
    frame = read_image(list_images(images)[0][0])
    machine = cpu.current().describe()
    rows = []
    for name, (backend, hint) in ({} if no_fp32 else FP32_ROWS).items():
        if (backends and backend not in backends) or (only and not any(o in name for o in only)):
            continue
        try:
            rows.append({"variant": name, "backend": backend,
                         "engine_s": engine_seconds(bundle, backend, "fp32", frame, repeats, hint)})
            click.echo(f"{name}: {rows[-1]['engine_s']:.3f} s", err=True)
        except WinclipError as exc:
            click.echo(f"{name}: skipped ({exc})", err=True)
    for name, (backend, settings) in VARIANTS.items():
        if (backends and backend not in backends) or (only and not any(o in name for o in only)):
            continue
        try:
            rows.append(variant_row(bundle, images, name, backend, settings, layers, frame, repeats))
        except WinclipError as exc:
            click.echo(f"{name}: skipped ({exc})", err=True)
            continue
        r = rows[-1]
        click.echo(f"{name}: {r['engine_s']:.3f} s, guard {'passed' if r['passed'] else 'FAILED'}, "
                   f"cosine min {r['cosine_min']:.4f}", err=True)
        if out is not None:  # a long run keeps what it has measured so far
            out.write_text(json.dumps({"cpu": cpu.current().record(), "rows": rows}, indent=2) + "\n")
    click.echo(table(rows, machine))
    if out is not None:
        out.write_text(json.dumps({"cpu": cpu.current().record(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
