"""int8 variants of one bundle side by side: engine time per frame and the accuracy guard's numbers.

Makes each variant from the bundle's fp32 engine in a scratch copy (the bundle itself is not
changed), times the fp32 engine and every variant in this one process on the same frames, and
prints a markdown table; the defaults of winclip-quantize come from such a run.

    python -m winclip.benchmarks.bench_quantize BUNDLE --images DIR [--repeats 3] [--out results.json]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import click

from winclip.runtime.command import CONTEXT, Command, Whole

from winclip.calibration.engines.int8 import Int8Settings

VARIANTS = {
    "dynamic, per-channel, 7-bit (default)": Int8Settings(),
    "dynamic, per-tensor, 7-bit": Int8Settings(per_channel=False),
    "dynamic, per-channel, 8-bit": Int8Settings(reduce_range=False),
    "dynamic, per-channel, 7-bit, attention too": Int8Settings(quantize_attention=True),
    "dynamic, per-channel, 7-bit, first+last block fp32": Int8Settings(fp32_blocks=(1, -1)),
    "static QOperator, per-channel, 7-bit": Int8Settings(method="static", quant_format="qoperator"),
    "static QDQ, per-channel, 7-bit": Int8Settings(method="static", quant_format="qdq"),
}


def engine_seconds(bundle: Path, precision: str, frame, repeats: int) -> float:
    from winclip.runtime import Detector

    det = Detector.from_bundle(bundle, object=_objects(bundle)[0], provider="cpu", precision=precision, cache=False,
                               self_check=False)
    det.embed([frame])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        det.embed([frame])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _objects(bundle: Path) -> list[str]:
    from winclip.runtime.bundle import Bundle

    return Bundle.load(bundle).objects


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Real frames for the guard and calibration.")
@click.option("--repeats", type=Whole(1, 1000), default=3, help="Timed frames per engine.")
@click.option("--only", multiple=True, help="Run only the variants whose name contains this; repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the rows as JSON here.")
def main(bundle, images, repeats, only, out):
    """Time and guard int8 variants of BUNDLE's fp32 engine."""
    from winclip.calibration.engines.build import add_engine
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.images import list_images, read_image

    layers = Bundle.load(bundle).manifest.layers
    frame = read_image(list_images(images)[0][0])
    rows = [{"variant": "fp32", "engine_s": engine_seconds(bundle, "fp32", frame, repeats)}]
    click.echo(f"fp32: {rows[0]['engine_s']:.3f} s", err=True)
    for name, settings in VARIANTS.items():
        if only and not any(o in name for o in only):
            continue
        if settings.fp32_blocks:
            settings.fp32_blocks = tuple(layers if b == -1 else b for b in settings.fp32_blocks)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(shutil.copytree(bundle, Path(tmp) / "bundle"))
            t = time.perf_counter()
            engine = add_engine(copy, "int8", images, settings=settings, accept_degraded=True)
            made_s = time.perf_counter() - t
            seconds = engine_seconds(copy, "int8", frame, repeats)
            size = (copy / engine.file).stat().st_size / 2**20
        g = engine.guard
        row = {"variant": name, "settings": asdict(settings), "engine_s": seconds, "made_s": made_s, "mib": size,
               "passed": g["passed"], "modes": g["modes"], "embedding_cosine_min": min(g["embedding_cosine_min"].values())}
        rows.append(row)
        click.echo(f"{name}: {seconds:.3f} s, guard {'passed' if g['passed'] else 'FAILED'}", err=True)
    base = rows[0]["engine_s"]
    click.echo("| variant | engine s/frame | x fp32 | MiB | guard | zero-shot map r (median/min) | "
               "few-shot map r (median/min) | score rho (0/few) | embedding cos min |\n|---|---|---|---|---|---|---|---|---|")
    click.echo(f"| fp32 | {base:.2f} | 1.00 | | | | | | |")
    for r in rows[1:]:
        z, f = r["modes"]["zero-shot"], r["modes"]["few-shot"]
        click.echo(f"| {r['variant']} | {r['engine_s']:.2f} | {base / r['engine_s']:.2f} | {r['mib']:.0f} | "
                   f"{'pass' if r['passed'] else 'FAIL'} | {z['map_pearson_median']:.4f}/{z['map_pearson_min']:.4f} | "
                   f"{f['map_pearson_median']:.4f}/{f['map_pearson_min']:.4f} | "
                   f"{z['score_spearman']:.3f}/{f['score_spearman']:.3f} | {r['embedding_cosine_min']:.4f} |")
    if out is not None:
        out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
