"""One benchmark configuration, measured in a process of its own (cold start and peak memory are its own).

    python -m winclip.benchmarks.measure CONFIG.json   ->  one JSON object on stdout

CONFIG: {"engine": "runtime" | "torch", "bundle", "backend", "precision", "provider", "batch", "shots",
"frames", "warmup", "threads", "images": [...], "normals": [...], "object", "checkpoint"}.
A runtime configuration also gives the peak resident memory of each stage (load, first frame,
memory build, steady state), its first start running in a process of its own before.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from winclip.benchmarks.rss import StagePeaks, status

STAGES = ("load", "first frame", "memory build", "steady state")  # the stages a runtime row gives a peak for


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _batches(images: list, batch: int, count: int):
    """`count` batches of `batch` frames, cycling through the images."""
    n = 0
    for _ in range(count):
        yield [images[(n + i) % len(images)] for i in range(batch)]
        n += batch


def measure_runtime(cfg: dict) -> dict:
    from winclip.runtime import Detector
    from winclip.runtime.images import read_image

    images = [read_image(p) for p in cfg["images"]]
    normals = [read_image(p) for p in cfg["normals"][:cfg["shots"]]]
    options = _detector_options(cfg)
    first_start_s = _first_start(cfg)  # may write the optimised-graph cache; the cache is warm after it
    peaks = StagePeaks()
    t0 = time.perf_counter()
    det = Detector.from_bundle(cfg["bundle"], **options)
    peaks.mark(STAGES[0])
    det(images[0])
    cold_start = time.perf_counter() - t0
    peaks.mark(STAGES[1])
    if normals:
        det.build_memory(normals)
        peaks.mark(STAGES[2])
    for batch in _batches(images, cfg["batch"], cfg["warmup"]):
        det(batch)
    totals, stages = [], {}
    for batch in _batches(images, cfg["batch"], cfg["frames"]):
        t = time.perf_counter()
        results = det(batch)
        totals.append((time.perf_counter() - t) / len(batch))
        for name, ms in results[0].timings_ms.items():
            stages.setdefault(name, []).append(ms / 1000.0)
    peaks.mark(STAGES[3])
    return {"engine_file": det.engine.file, "engine_files": [ref.file for ref in det.engine.files()],
            "engine_label": det.engine.label, "precision": det.engine.precision, "providers": det.providers,
            "first_start_s": first_start_s, "cold_start_s": cold_start, "frame_s": totals,
            "stages_s": {k: statistics.median(v) for k, v in stages.items()}, "peak_mib": peaks.peaks}


def first_start(cfg: dict) -> float:
    """Seconds from nothing to a first scored frame, the optimised-graph cache written on the way if it was not there."""
    from winclip.runtime import Detector
    from winclip.runtime.images import read_image

    image = read_image(cfg["images"][0])
    options = _detector_options(cfg)
    t0 = time.perf_counter()
    Detector.from_bundle(cfg["bundle"], **options)(image)
    return time.perf_counter() - t0


def _detector_options(cfg: dict) -> dict:
    """Detector.from_bundle's options for a runtime row (the first start and the timed run alike)."""
    from winclip.runtime.bundle import Bundle

    object_name = cfg.get("object") or Bundle.load(cfg["bundle"], verify_checksums=False).objects[0]  # as the torch side
    from winclip.runtime.backends import BackendOptions

    return dict(object=object_name, backend=cfg.get("backend", "onnxruntime"),
                options=BackendOptions(device=cfg["provider"], precision=cfg["precision"], threads=cfg.get("threads"),
                                       remeasure=bool(cfg.get("remeasure"))))


def _first_start(cfg: dict) -> float:
    """first_start in a process of its own, so that the measured process's memory is only its own run's."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(cfg, fh)
    try:
        proc = subprocess.run([sys.executable, "-m", "winclip.benchmarks.measure", "--first-start", fh.name],
                              capture_output=True, text=True, check=True)
    finally:
        os.unlink(fh.name)
    return float(proc.stdout.strip().splitlines()[-1])


def measure_torch(cfg: dict) -> dict:
    import numpy as np
    import open_clip
    import torch

    from winclip.export.backbones import load_backbone, quiet_random_init, register_model_configs
    from winclip.export.torch_winclip import TorchWinClip, read_rgb
    from winclip.runtime.bundle import Bundle

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    register_model_configs(cfg.get("model_configs") or [])
    bundle = Bundle.load(cfg["bundle"])
    m = bundle.manifest
    if cfg.get("checkpoint"):
        model = load_backbone(m.backbone["open_clip_model"], cfg["checkpoint"]).model
    else:  # speed does not depend on the weights' values
        with quiet_random_init():
            model = open_clip.create_model(m.backbone["open_clip_model"], pretrained=None).eval()
    ref = TorchWinClip(model, bundle.text_prototypes(cfg.get("object") or bundle.objects[0]), scales=m.scales,
                       temperature=m.temperature, patch_layer=m.patch_layer, stride=m.stride,
                       patch_ln_post=m.patch_ln_post)
    images = [read_rgb(p).astype(np.float32) for p in cfg["images"]]
    if cfg["shots"]:
        ref.set_normal_images([read_rgb(p) for p in cfg["normals"][:cfg["shots"]]])
    for batch in _batches(images, cfg["batch"], cfg["warmup"]):
        ref(batch)
    totals = []
    for batch in _batches(images, cfg["batch"], cfg["frames"]):
        t = time.perf_counter()
        ref(batch)
        totals.append((time.perf_counter() - t) / len(batch))
    return {"frame_s": totals, "torch": torch.__version__}


def frame_times(raw: dict) -> dict:
    """A child's raw per-frame seconds ("frame_s") as the row's p50, p95, FPS and count."""
    frame = raw.pop("frame_s")
    return {**raw, "p50_s": statistics.median(frame), "p95_s": _percentile(frame, 0.95),
            "fps": 1.0 / statistics.median(frame), "timed_frames": len(frame)}


def summarize(raw: dict) -> dict:
    """Run in the measured child: frame_times, and this process's peak resident memory."""
    out = frame_times(raw)
    # resetting VmHWM per stage also resets what getrusage reports: the run's peak is the highest of both
    # Not ru_maxrss: Linux carries it across exec, so a child would report its parent's peak at fork time.
    # VmHWM belongs to this process's own memory since exec (the stages reset it, each keeping its peak).
    hwm = status().get("VmHWM")
    stages = list(raw.get("peak_mib", {}).values())
    if stages:
        out["peak_rss_mib"] = max([*stages, hwm or 0.0])
    else:
        out["peak_rss_mib"] = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main(argv: list[str]) -> int:
    if argv[1] == "--first-start":
        print(first_start(json.loads(open(argv[2], encoding="utf-8").read())))
        return 0
    cfg = json.loads(open(argv[1], encoding="utf-8").read())
    raw = measure_torch(cfg) if cfg["engine"] == "torch" else measure_runtime(cfg)
    print(json.dumps(summarize(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
