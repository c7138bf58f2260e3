"""Per-frame latency of the winclip-edge runtime beside the plain torch WinCLIP reference.

Same machine, same run, same weights (ViT-B-16+ architecture; random weights unless a
checkpoint is given: speed does not depend on the values). Frames are real images
(conformal-clip-data textiles, elpv solar cells) at their own sizes and tiled into an
MVTec-sized 1000x1250 frame. Reports medians per stage and the ratios.

    python benchmarks/bench_latency.py [--repeats 5] [--checkpoint PATH] [--json out.json]
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def rgb_of(frame: np.ndarray) -> np.ndarray:
    """8-bit gray or BGR -> RGB float in [0, 1], for the torch side."""
    rgb = np.repeat(frame[:, :, None], 3, 2) if frame.ndim == 2 else frame[:, :, ::-1]
    return rgb.astype(np.float64) / 255.0

from winclip.calibration.datasets import elpv_images, textile_images
from winclip.export.testing import VIT_B16_PLUS as VIT
from winclip.export.testing import export_from_checkpoint as export
from winclip.export.testing import make_model, save_checkpoint
from winclip.runtime.images import read_image as read


def _frames() -> dict[str, np.ndarray]:
    textile = [read(p) for p in textile_images("local", 20)]
    rows = [np.concatenate(textile[r * 5:(r + 1) * 5], axis=1) for r in range(4)]
    return {
        "textile 250x250": textile[0],
        "elpv 300x300 gray": read(elpv_images(1, start=50)[0]),
        "mosaic 1000x1250": np.concatenate(rows, axis=0),
    }


def _median_ms(samples):
    return round(1000 * statistics.median(samples), 2)


@click.command()
@click.option("--repeats", default=5, help="Timed frames per image (after one warm-up).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="open_clip ViT-B-16-plus-240 checkpoint; default: random weights.")
@click.option("--threads", type=int, default=None, help="ORT and torch threads. [default: all cores]")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write results here.")
def main(repeats, checkpoint, threads, json_out):
    """Time preprocessing, engine, scoring and upsampling per frame, and the torch reference."""
    import torch

    from winclip.export.torch_winclip import TorchWinClip
    from winclip.runtime import Detector

    if threads:
        torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="winclip-bench-"))
    model = make_model(VIT, seed=0)
    if checkpoint is None:
        checkpoint = save_checkpoint(model, work / "vit.pt")
    else:
        from winclip.export.backbones import load_backbone

        model = load_backbone("ViT-B-16+", str(checkpoint)).model
    t0 = time.perf_counter()
    bundle = export(work / "bundle", checkpoint, "ViT-B-16+", objects=("textile",))
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det = Detector.from_bundle(bundle, object="textile", provider="cpu", threads=threads)
    first_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det = Detector.from_bundle(bundle, object="textile", provider="cpu", threads=threads)
    second_start_s = time.perf_counter() - t0
    ref = TorchWinClip(model, det.bundle.text_prototypes("textile"))
    normals = [read(p) for p in textile_images("nominal", 4)]

    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
               "export_s": round(export_s, 1), "session_start_s": [round(first_start_s, 2), round(second_start_s, 2)],
               "repeats": repeats, "rows": []}
    for mode in ("zero-shot", "4-shot"):
        if mode == "4-shot":
            det.build_memory(normals)
            ref.set_normal_images([rgb_of(f) for f in normals])
        for name, frame in _frames().items():
            stages = {k: [] for k in ("preprocess", "engine", "scoring", "upsample")}
            torch_s = []
            det(frame)  # warm-up
            for _ in range(repeats):
                r = det(frame)[0]
                for k in stages:
                    stages[k].append(r.timings_ms[k] / 1000)
            rgb = rgb_of(frame)
            ref([rgb])
            for _ in range(repeats):
                t = time.perf_counter()
                ref([rgb])
                torch_s.append(time.perf_counter() - t)
            med = {k: _median_ms(v) for k, v in stages.items()}
            runtime_ms = sum(med.values())
            overhead = med["preprocess"] + med["scoring"] + med["upsample"]
            row = {"mode": mode, "frame": name, **med, "runtime_total": round(runtime_ms, 1),
                   "overhead_pct_of_engine": round(100 * overhead / med["engine"], 2),
                   "torch_reference": _median_ms(torch_s),
                   "speedup_vs_torch": round(_median_ms(torch_s) / runtime_ms, 2)}
            results["rows"].append(row)
            click.echo(json.dumps(row))
    header = f"{'mode':9} {'frame':19} {'prep':>7} {'engine':>8} {'score':>6} {'upsmp':>6} {'ovh%':>5} {'torch':>8} {'x':>5}"
    click.echo(f"\n{results['machine']}; export {results['export_s']} s; session start first/second "
               f"{results['session_start_s']} s; medians of {repeats} frames, ms\n{header}")
    for r in results["rows"]:
        click.echo(f"{r['mode']:9} {r['frame']:19} {r['preprocess']:7.1f} {r['engine']:8.1f} {r['scoring']:6.1f} "
                   f"{r['upsample']:6.1f} {r['overhead_pct_of_engine']:5.2f} {r['torch_reference']:8.1f} {r['speedup_vs_torch']:5.2f}")
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
