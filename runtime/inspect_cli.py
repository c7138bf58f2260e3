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

try:
    import onnxruntime  # noqa: F401  (from the [cpu] or [gpu] extra, never both)
except ImportError:
    sys.exit("Error: onnxruntime is not installed: pip install 'winclip-edge[cpu]' (or [gpu] on a CUDA box)")

from winclip.calibration.reference import ReferenceSetError, load_reference_images
from winclip.runtime.bundle import BundleError
from winclip.runtime.detector import Detector
from winclip.runtime.images import ImageReadError, list_images, read_image
from winclip.runtime.overlay import heatmap_overlay
from winclip.runtime.session import PROVIDERS


def artifact_names(paths: list[Path], source: Path) -> dict[Path, str]:
    """A unique file stem per image: its stem, sub-folders joined by '__'.

    Where two images would share one (a.png and a.jpg, or x/y.png and x__y.png)
    they keep their suffix and, if still needed, a counter: no map overwrites another.
    """
    names: dict[Path, str] = {}
    taken: set[str] = set()
    stems = ["__".join(p.relative_to(source).with_suffix("").parts) for p in paths]
    clashes = {s for s in stems if stems.count(s) > 1}
    for path, stem in zip(paths, stems):
        name = "__".join(path.relative_to(source).parts) if stem in clashes else stem
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names[path] = name
    return names


def _write_atomic(target: Path, write) -> None:
    tmp = target.with_name(f".tmp-{target.name}")  # keeps the suffix: writers pick formats by it
    if write(tmp) is False:  # cv2.imwrite reports failure by its return value
        raise OSError(f"could not write {target}")
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
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help="ONNX Runtime provider.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads. [default: all cores]")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, help="Frames per session call.")
@click.option("--temperature", type=float, default=None, help="Override the manifest's softmax temperature.")
@click.option("--force", is_flag=True, help="Replace an existing OUT/events.jsonl.")
@click.option("--no-cache", is_flag=True, help="Neither use nor write the optimised-graph cache (in $XDG_CACHE_HOME/winclip-edge).")
def main(bundle, source, out, object_name, reference, shots, save_maps, save_overlays, threshold,
         provider, threads, batch_size, temperature, force, no_cache):
    """Score every image under --source with the WinCLIP bundle BUNDLE.

    Writes one JSON line per image to OUT/events.jsonl (source, image_score,
    anomalous, per-stage latency in ms, or an error for an unreadable image).
    Lines go to OUT/events.jsonl.partial as they come and the file is renamed
    when the run completes. With --reference it runs WinCLIP+ (few-shot), else
    zero-shot WinCLIP.
    """
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
    except (BundleError, ReferenceSetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{bundle}: object {detector.object_name!r} on {', '.join(detector.providers)}", err=True)

    out.mkdir(parents=True, exist_ok=True)
    for flag, sub in ((save_maps, "maps"), (save_overlays, "overlays")):
        if flag:
            (out / sub).mkdir(exist_ok=True)
    counts = {"scored": 0, "errors": 0, "anomalous": 0}
    latencies = []
    names = artifact_names(images, source)
    partial = events_path.with_name(events_path.name + ".partial")
    try:
        _inspect(detector, images, names, out, partial, save_maps, save_overlays, batch_size, counts, latencies)
    except OSError as exc:  # a full disk or a vanished folder: stop, keep what was written
        raise click.ClickException(f"{exc}; events so far are in {partial}") from None
    os.replace(partial, events_path)
    median = statistics.median(latencies) if latencies else float("nan")
    click.echo(f"{counts['scored']} scored, {counts['errors']} errors, {counts['anomalous']} anomalous; "
               f"median {median:.1f} ms/frame; events: {events_path}", err=True)


def _score(detector, frames) -> list:
    """One session call for the batch; if a frame is unusable, the others still get scored."""
    if not frames:
        return []
    try:
        return detector(frames)
    except ValueError as exc:
        if len(frames) == 1:
            return [str(exc)]
        return [r for f in frames for r in _score(detector, [f])]


def _inspect(detector, images, names, out, partial, save_maps, save_overlays, batch_size, counts, latencies):
    with open(partial, "w", encoding="utf-8") as events, tqdm(total=len(images), unit="img", file=sys.stderr) as bar:
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
            results = _score(detector, frames)
            for path, result in zip(ok_paths, results):
                if isinstance(result, str):
                    events.write(json.dumps({"source": str(path), "error": result}) + "\n")
                    counts["errors"] += 1
            done = [(p, f, r) for p, f, r in zip(ok_paths, frames, results) if not isinstance(r, str)]
            for path, frame, result in done:
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
                name = names[path]
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


if __name__ == "__main__":
    sys.exit(main())
