"""The CUDA check: fp32 and fp16 engines on a GPU, batch 1/8/32, latency table and fp16-vs-fp32 agreement.

Meant for a machine with an NVIDIA GPU and onnxruntime-gpu, end to end in under five minutes:

    python -m winclip.benchmarks.gpu_check --out gpu-check            # exports a random ViT-B-16+ bundle
    python -m winclip.benchmarks.gpu_check --bundle bundles/vitb16plus --images parts/ --out gpu-check

Without --bundle it exports the ViT-B-16+ architecture with random weights (needs the export extra;
speed does not depend on the weights). It adds an fp16 engine if the bundle has none (guarded on
CUDA), then times each engine with IO binding. On a box that lends a GPU without internet, carry
the wheels the image lacks (onnxruntime-gpu, open_clip_torch, ftfy, and winclip-edge itself).
`--provider cpu` runs the same flow on the CPU (the tests do, on a tiny bundle).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from winclip.runtime.command import CONTEXT, Command, Whole


def _frames(images: Path | None, count: int = 8) -> list[np.ndarray]:
    from winclip.runtime.images import list_images, read_image

    if images is not None:
        return [read_image(p) for p in list_images(images)[0][:count]]
    try:
        from winclip.calibration.evaluation.datasets import textile_images

        return [read_image(p) for p in textile_images("local", count)]
    except Exception:  # no dataset package on this machine: image-like noise is enough for timing
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(count)]


def _bundle(bundle: Path | None, work: Path) -> Path:
    if bundle is not None:
        return bundle
    from winclip.export.exporter import ExportOptions, export_bundle

    # random weights (speed does not depend on their values), as `winclip-export --pretrained none` makes them
    return export_bundle(ExportOptions(out=work / "bundle", backbone="ViT-B-16+", pretrained="none", objects=["part"]))


def _first_object(bundle: Path) -> str:
    from winclip.runtime.bundle import Bundle

    return Bundle.load(bundle).objects[0]


def time_engine(bundle: Path, precision: str, provider: str, batch: int, frames: list, repeats: int) -> dict:
    from winclip.runtime import Detector

    det = Detector.from_bundle(bundle, object=_first_object(bundle), provider=provider, precision=precision)
    batch_frames = [frames[i % len(frames)] for i in range(batch)]
    det(batch_frames)  # warm-up: allocations, kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        det(batch_frames)
        times.append(time.perf_counter() - t)
    p50 = statistics.median(times)
    return {"precision": precision, "provider": det.providers[0], "batch": batch, "ms_per_batch": 1000 * p50,
            "ms_per_frame": 1000 * p50 / batch, "fps": batch / p50}


def agreement(bundle: Path, provider: str, frames: list) -> dict:
    from winclip.calibration.engines.guard import pearson_rows
    from winclip.runtime import Detector

    ref = Detector.from_bundle(bundle, object=_first_object(bundle), provider=provider, precision="fp32")
    half = Detector.from_bundle(bundle, object=_first_object(bundle), provider=provider, precision="fp16")
    a, b = ref.score(frames)[0], half.score(frames)[0]
    r = pearson_rows(a.grid_map.reshape(len(frames), -1), b.grid_map.reshape(len(frames), -1))
    return {"frames": len(frames), "score_max_abs_diff": float(np.abs(a.image_score - b.image_score).max()),
            "map_max_abs_diff": float(np.abs(a.grid_map - b.grid_map).max()), "map_pearson_min": float(np.min(r))}


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Bundle to check. [default: export a random-weight ViT-B-16+]")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Real frames: for the fp16 engine's guard and the timings. [default: the dev datasets]")
@click.option("--provider", type=click.Choice(("cuda", "cpu")), default="cuda", help="Where to run.")
@click.option("--batches", default="1,8,32", help="Batch sizes, comma separated.")
@click.option("--repeats", type=Whole(1, 1000), default=5, help="Timed calls per configuration.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write gpu-check.json here.")
def main(bundle, images, provider, batches, repeats, out):
    """Time the fp32 and fp16 engines on CUDA and check that fp16 agrees with fp32."""
    from winclip.calibration.engines.build import QuantizeError
    from winclip.runtime.errors import BundleError

    try:
        result = _check(bundle, images, provider, batches, repeats)
    except (BundleError, QuantizeError) as exc:
        raise click.ClickException(str(exc)) from None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")


def _check(bundle, images, provider, batches, repeats) -> dict:
    from winclip.calibration.engines.build import add_engine
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.backends.onnxruntime import choose_providers

    choose_providers(provider)  # a clear error where CUDA is missing
    work = Path(tempfile.mkdtemp(prefix="winclip-gpu-check-"))
    t0 = time.perf_counter()
    bundle = _bundle(bundle, work)
    frames = _frames(images)
    if "fp16" not in Bundle.load(bundle).manifest.precisions:
        folder = images
        if folder is None:
            import cv2

            folder = work / "frames"
            folder.mkdir()
            for i, frame in enumerate(frames):
                cv2.imwrite(str(folder / f"{i}.png"), frame)
        add_engine(bundle, "fp16", folder, holdout=min(6, len(frames) - 1))
    rows = [time_engine(bundle, p, provider, int(b), frames, repeats)
            for p in ("fp32", "fp16") for b in batches.split(",")]
    result = {"bundle": str(bundle), "rows": rows, "agreement": agreement(bundle, provider, frames),
              "seconds": round(time.perf_counter() - t0, 1)}
    click.echo("| engine | provider | batch | ms/batch | ms/frame | FPS |\n|---|---|---|---|---|---|")
    for r in rows:
        click.echo(f"| {r['precision']} | {r['provider']} | {r['batch']} | {r['ms_per_batch']:.1f} | "
                   f"{r['ms_per_frame']:.2f} | {r['fps']:.1f} |")
    ag = result["agreement"]
    click.echo(f"fp16 vs fp32 on {ag['frames']} frames: max score diff {ag['score_max_abs_diff']:.2e}, "
               f"max map diff {ag['map_max_abs_diff']:.2e}, lowest map Pearson {ag['map_pearson_min']:.5f}; "
               f"{result['seconds']} s in all")
    return result


if __name__ == "__main__":
    sys.exit(main())
