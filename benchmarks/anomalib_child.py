"""anomalib's WinCLIP (torch) on the benchmark's frames, timed in an interpreter that has anomalib.

    ANOMALIB_PYTHON anomalib_child.py CONFIG.json  ->  one JSON object on stdout

Run as a plain script by `winclip-bench --compare-anomalib`, in a venv of its own (anomalib brings
torch, which the edge install never has), so it imports nothing of winclip-edge. Weights are
random (open_clip's architecture, no download; speed does not depend on the values). Timed per
frame: anomalib's own CLIP transform of the decoded frame and the model's forward (scores and
maps), as a user of anomalib's torch model would run it.
"""

from __future__ import annotations

import json
import sys
import time

import rss  # beside this script (standard library only): the peak from VmHWM, not ru_maxrss


def main(argv: list[str]) -> int:
    cfg = json.loads(open(argv[1], encoding="utf-8").read())
    import anomalib
    import open_clip
    import torch
    from anomalib.models.image.winclip import torch_model
    from PIL import Image

    create = open_clip.create_model_and_transforms

    def random_weights(name, *args, **kwargs):  # no hub download: the architecture only
        kwargs["pretrained"] = None
        return create(name, **kwargs)

    open_clip.create_model_and_transforms = random_weights
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = torch_model.WinClipModel(class_name=cfg.get("object") or "object").eval()
    transform = model._transform
    images = [Image.open(p).convert("RGB") for p in cfg["images"]]
    with torch.inference_mode():
        if cfg["shots"]:
            normals = torch.stack([transform(Image.open(p).convert("RGB")) for p in cfg["normals"][:cfg["shots"]]])
            model.setup(cfg.get("object") or "object", normals)

        def run(frames):
            return model(torch.stack([transform(f) for f in frames]))

        def batches(count):
            n = 0
            for _ in range(count):
                yield [images[(n + i) % len(images)] for i in range(cfg["batch"])]
                n += cfg["batch"]

        for frames in batches(cfg["warmup"]):
            run(frames)
        totals = []
        for frames in batches(cfg["frames"]):
            t = time.perf_counter()
            run(frames)
            totals.append((time.perf_counter() - t) / len(frames))
    # the raw frame times: winclip-bench summarises them as it does its own rows (measure.frame_times)
    print(json.dumps({"frame_s": totals, "anomalib": anomalib.__version__, "torch": torch.__version__,
                      "peak_rss_mib": rss.status().get("VmHWM", 0.0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
