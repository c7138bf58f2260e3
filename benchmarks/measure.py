"""One benchmark configuration, measured in a process of its own (cold start and peak memory are its own).

    python -m winclip.benchmarks.measure CONFIG.json   ->  one JSON object on stdout

CONFIG: {"engine": "runtime" | "torch", "bundle", "backend", "precision", "provider", "batch", "shots",
"frames", "warmup", "threads", "images": [...], "normals": [...], "object", "checkpoint"}.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time


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
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.images import read_image

    images = [read_image(p) for p in cfg["images"]]
    normals = [read_image(p) for p in cfg["normals"][:cfg["shots"]]]
    object_name = cfg.get("object") or Bundle.load(cfg["bundle"], verify_checksums=False).objects[0]  # the same object as the torch side
    options = dict(object=object_name, provider=cfg["provider"], precision=cfg["precision"],
                   threads=cfg.get("threads"), backend=cfg.get("backend", "onnxruntime"))
    t0 = time.perf_counter()
    det = Detector.from_bundle(cfg["bundle"], **options)  # may write the optimised-graph cache
    det(images[0])
    first_start = time.perf_counter() - t0
    del det
    t0 = time.perf_counter()
    det = Detector.from_bundle(cfg["bundle"], **options)  # the cache is warm now
    det(images[0])
    cold_start = time.perf_counter() - t0
    if normals:
        det.build_memory(normals)
    for batch in _batches(images, cfg["batch"], cfg["warmup"]):
        det(batch)
    totals, stages = [], {}
    for batch in _batches(images, cfg["batch"], cfg["frames"]):
        t = time.perf_counter()
        results = det(batch)
        totals.append((time.perf_counter() - t) / len(batch))
        for name, ms in results[0].timings_ms.items():
            stages.setdefault(name, []).append(ms / 1000.0)
    return {"engine_file": det.engine.file, "engine_files": [ref.file for ref in det.engine.files()],
            "engine_label": det.engine.label, "precision": det.engine.precision, "providers": det.providers,
            "first_start_s": first_start, "cold_start_s": cold_start, "frame_s": totals,
            "stages_s": {k: statistics.median(v) for k, v in stages.items()}}


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


def summarize(raw: dict) -> dict:
    frame = raw.pop("frame_s")
    out = {**raw, "p50_s": statistics.median(frame), "p95_s": _percentile(frame, 0.95), "fps": 1.0 / statistics.median(frame),
           "timed_frames": len(frame)}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main(argv: list[str]) -> int:
    cfg = json.loads(open(argv[1], encoding="utf-8").read())
    raw = measure_torch(cfg) if cfg["engine"] == "torch" else measure_runtime(cfg)
    print(json.dumps(summarize(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
