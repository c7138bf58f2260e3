"""Frame preprocessing with numpy/OpenCV, driven by the manifest's constants.

Resizing reproduces torch's bicubic interpolation with antialias (PIL's
separable filter: cubic a=-0.5, support widened by the downscale factor, taps
clipped at the border and renormalised), applied as two small matrices per
input shape. OpenCV's INTER_CUBIC has no antialias, and INTER_AREA is a
different filter, so neither matches when a 700-1500 px frame goes to 240 px.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from winclip.runtime.bundle import CHANNELS_RGB, INTERPOLATION_BICUBIC, RESIZE_SQUASH


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=32)
def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of antialiased bicubic resampling."""
    scale = in_size / out_size
    widen = max(scale, 1.0)
    support = 2.0 * widen
    centers = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(centers - support + 0.5), 0)
    hi = np.minimum(np.trunc(centers + support + 0.5), in_size)
    j = np.arange(in_size)[None, :]
    w = _cubic((j - centers[:, None] + 0.5) / widen)
    w = np.where((j >= lo[:, None]) & (j < hi[:, None]), w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def to_rgb_float(frame: np.ndarray, color_order: str = "bgr") -> np.ndarray:
    """Any frame (gray, BGR/RGB, BGRA/RGBA; 8-bit, 16-bit or float) -> RGB float32 in [0, 1]."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise ValueError(f"unsupported frame shape {frame.shape}: expected HxW, HxWx3 or HxWx4")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"empty frame of shape {frame.shape}")
    if frame.dtype == np.uint8:
        img = frame.astype(np.float32) * (1.0 / 255.0)
    elif frame.dtype == np.uint16:
        img = frame.astype(np.float32) * (1.0 / 65535.0)
    elif np.issubdtype(frame.dtype, np.floating):
        img = frame.astype(np.float32)
    else:
        raise ValueError(f"unsupported frame dtype {frame.dtype}: use uint8, uint16 or float in [0, 1]")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    if color_order == "bgr":
        img = img[:, :, ::-1]
    elif color_order != "rgb":
        raise ValueError(f"color order must be 'bgr' or 'rgb', got {color_order!r}")
    return img


class Preprocessor:
    """Frames -> the graph's (B, 3, H, W) float32 input, per the manifest."""

    def __init__(self, spec: dict):
        if spec.get("resize") != RESIZE_SQUASH:
            raise ValueError(f"resize policy {spec.get('resize')!r} is not supported by this runtime")
        if spec.get("interpolation") != INTERPOLATION_BICUBIC or not spec.get("antialias", False):
            raise ValueError("this runtime implements bicubic resizing with antialias only")
        if spec.get("channel_order", CHANNELS_RGB) != CHANNELS_RGB:
            raise ValueError(f"channel order {spec.get('channel_order')!r} is not supported")
        self.height, self.width = (int(s) for s in spec["input_size"])
        self.mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.inv_std = (1.0 / np.asarray(spec["std"], dtype=np.float32)).reshape(3, 1, 1)

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float -> (3, height, width) float32, antialiased bicubic squash."""
        h, w = rgb.shape[:2]
        rows = resample_matrix(h, self.height)
        cols = resample_matrix(w, self.width)
        planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, H, W)
        return rows @ planes @ cols.T

    def __call__(self, frames, color_order: str = "bgr") -> np.ndarray:
        batch = np.empty((len(frames), 3, self.height, self.width), dtype=np.float32)
        for i, frame in enumerate(frames):
            batch[i] = (self.resize(to_rgb_float(frame, color_order)) - self.mean) * self.inv_std
        return batch


def upsample_map(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, half-pixel centres (align_corners=False), as torch's interpolate."""
    return cv2.resize(grid_map.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
