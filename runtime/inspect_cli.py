"""`winclip-inspect`: score every image of a folder with an engine bundle."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from winclip.calibration.reference import ReferenceError, load_reference_images
from winclip.runtime.bundle import BundleError
from winclip.runtime.images import ImageReadError, list_images, read_image
from winclip.runtime.overlay import heatmap_overlay


def _artifact_name(path: Path, source: Path) -> str:
    """The image's stem; sub-folders join with '__' so nested names cannot collide."""
    rel = path.relative_to(source).with_suffix("")
    return "__".join(rel.parts)


def _write_atomic(target: Path, write) -> None:
    tmp = target.with_name(f".tmp-{target.name}")  # keeps the suffix: writers pick formats by it
    write(tmp)
    os.replace(tmp, target)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--source", required=True, type=click.Path(path_type=Path), help="Folder of images to score (searched recursively).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder for events.jsonl, maps and overlays.")
@click.option("--object", "object_name", default=None, help="Object whose text embeddings to use. [default: the bundle's only object]")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Folder of normal images: builds the WinCLIP+ few-shot memory.")
@click.option("--shots", type=int, default=None, help="Reference images to use (the first K, sorted). [default: all]")
@click.option("--save-maps", is_flag=True, help="Write OUT/maps/<stem>.npy, float32 at the image's resolution.")
@click.option("--save-overlays", is_flag=True, help="Write OUT/overlays/<stem>.png heat maps over the image.")
@click.option("--threshold", type=float, default=None, help="Image score at or above which a part is anomalous.")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", help="ONNX Runtime provider.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads. [default: all cores]")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, help="Frames per session call.")
@click.option("--temperature", type=float, default=None, help="Override the manifest's softmax temperature.")
@click.option("--force", is_flag=True, help="Replace an existing OUT/events.jsonl.")
@click.option("--no-cache", is_flag=True, help="Neither use nor write the optimised-graph cache beside the bundle.")
def main(bundle, source, out, object_name, reference, shots, save_maps, save_overlays, threshold,
         provider, threads, batch_size, temperature, force, no_cache):
    """Score every image under --source with the WinCLIP bundle BUNDLE.

    Writes one JSON line per image to OUT/events.jsonl (source, image_score,
    anomalous, per-stage latency in ms, or an error for an unreadable image).
    With --reference it runs WinCLIP+ (few-shot), else zero-shot WinCLIP.
    """
    from winclip.runtime.detector import Detector

    try:
        images = list_images(source)
    except ImageReadError as exc:
        raise click.ClickException(str(exc)) from None
    if not images:
        raise click.ClickException(f"no images found in {source}")
    events_path = out / "events.jsonl"
    if events_path.exists() and not force:
        raise click.ClickException(f"{events_path} exists; pass --force to replace it")
    try:
        detector = Detector.from_bundle(bundle, object=object_name, provider=provider, threads=threads,
                                        temperature=temperature, threshold=threshold, cache=not no_cache)
        if reference is not None:
            refs = load_reference_images(reference, shots)
            detector.set_reference(refs)
            click.echo(f"WinCLIP+ memory from {len(refs)} normal images", err=True)
    except (BundleError, ReferenceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{bundle}: object {detector.object_name!r} on {', '.join(detector.providers)}", err=True)

    out.mkdir(parents=True, exist_ok=True)
    for flag, sub in ((save_maps, "maps"), (save_overlays, "overlays")):
        if flag:
            (out / sub).mkdir(exist_ok=True)
    counts = {"scored": 0, "errors": 0, "anomalous": 0}
    latencies = []
    with open(events_path, "w", encoding="utf-8") as events, tqdm(total=len(images), unit="img", file=sys.stderr) as bar:
        for start in range(0, len(images), batch_size):
            paths = images[start:start + batch_size]
            frames, ok_paths = [], []
            for path in paths:
                try:
                    frames.append(read_image(path))
                    ok_paths.append(path)
                except ImageReadError as exc:
                    events.write(json.dumps({"source": str(path), "error": str(exc)}) + "\n")
                    counts["errors"] += 1
            results = []
            if frames:
                try:
                    results = detector(frames)
                except ValueError as exc:  # e.g. an unsupported pixel format in this batch
                    for path in ok_paths:
                        events.write(json.dumps({"source": str(path), "error": str(exc)}) + "\n")
                    counts["errors"] += len(ok_paths)
            for path, frame, result in zip(ok_paths, frames, results):
                event = {
                    "source": str(path),
                    "time": time.time(),
                    "height": int(frame.shape[0]),
                    "width": int(frame.shape[1]),
                    "image_score": result.image_score,
                    "anomalous": result.anomalous,
                    "map_max": float(result.anomaly_map.max()),
                    "latency_ms": {**{k: round(v, 3) for k, v in result.timings_ms.items()},
                                   "total": round(sum(result.timings_ms.values()), 3)},
                }
                name = _artifact_name(path, source)
                if save_maps:
                    target = out / "maps" / f"{name}.npy"
                    _write_atomic(target, lambda t, m=result.anomaly_map: np.save(t, m, allow_pickle=False))
                    event["map"] = str(target)
                if save_overlays:
                    target = out / "overlays" / f"{name}.png"
                    img = heatmap_overlay(frame, result.anomaly_map)
                    _write_atomic(target, lambda t, im=img: cv2.imwrite(str(t), im))
                    event["overlay"] = str(target)
                events.write(json.dumps(event) + "\n")
                counts["scored"] += 1
                counts["anomalous"] += bool(result.anomalous)
                latencies.append(event["latency_ms"]["total"])
            events.flush()
            bar.update(len(paths))
    median = statistics.median(latencies) if latencies else float("nan")
    click.echo(f"{counts['scored']} scored, {counts['errors']} errors, {counts['anomalous']} anomalous; "
               f"median {median:.1f} ms/frame; events: {events_path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
