"""How closely the runtime's numpy resize matches torchvision's bicubic+antialias, on real images.

Frames: elpv solar cells (300 px gray) and conformal-clip textiles (250 px colour) tiled
into 1200x1500 and 1000x1250 frames, as MVTec/VisA frames are 700-1500 px, squashed to 240.
Differences are in [0, 1] pixel units, before mean/std normalisation (which divides by ~0.27).

    python benchmarks/bench_preprocess.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from winclip.calibration.evaluation.datasets import elpv_images, textile_images
from winclip.export.torch_winclip import read_rgb
from winclip.runtime.preprocess import resize_frame


def mosaic(frames, rows, cols):
    return np.concatenate([np.concatenate(frames[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def main() -> None:
    cells = [read_rgb(p).astype(np.float32) for p in elpv_images(20, start=300)]
    textiles = [read_rgb(p).astype(np.float32) for p in textile_images("local", 20)]
    frames = {"elpv 1200x1500": mosaic(cells, 4, 5), "textile 1000x1250": mosaic(textiles, 4, 5),
              "elpv 300x300": cells[0], "textile 250x250": textiles[0]}
    print(f"{'frame':18} {'vs torch f64':>14} {'vs torchvision f32':>20} {'vs PIL uint8 (open_clip)':>26} {'ms':>6}")
    for name, rgb in frames.items():
        t = time.perf_counter()
        ours = resize_frame(rgb, (240, 240), "rgb")
        ms = 1000 * (time.perf_counter() - t)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        tv32 = TF.resize(tensor, [240, 240], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).numpy()
        tv64 = TF.resize(tensor.double(), [240, 240], interpolation=TF.InterpolationMode.BICUBIC,
                         antialias=True).float().numpy()
        pil = Image.fromarray((rgb * 255).round().astype(np.uint8)).resize((240, 240), Image.BICUBIC)
        pil = np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 255
        cells_ = [np.abs(ours - ref) for ref in (tv64, tv32, pil)]
        print(f"{name:18} " + " ".join(f"{d.max():.1e}/{d.mean():.0e}".rjust(w) for d, w in zip(cells_, (14, 20, 26)))
              + f" {ms:6.1f}")
    print("(max/mean absolute difference)")


if __name__ == "__main__":
    main()
