"""Frame preprocessing with numpy, driven by the manifest's constants.

Resizing reproduces torch's bicubic interpolation with antialias (PIL's
separable filter: cubic a=-0.5, support widened by the downscale factor, taps
clipped at the border and renormalised). OpenCV's INTER_CUBIC has no antialias
and INTER_AREA is another filter, so neither matches when a 700-1500 px frame
goes to 240 px.

Memory follows the output, not the input: the frame is never converted to
float as a whole; it is resampled along its longer-shrinking axis in strips of
rows, each converted on the fly, and channel order and bit depth (both linear)
are applied after resampling.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from winclip.runtime.contract import Preprocess

STRIP_ROWS = 256  # rows converted to float at a time
DENSE_LIMIT = 1 << 22  # in x out entries up to which one dense matrix product is fastest


@lru_cache(maxsize=64)
def resample_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First tap index (out,) and float32 weights (out, taps) of antialiased bicubic resampling."""
    scale = in_size / out_size
    widen = max(scale, 1.0)
    support = 2.0 * widen
    centers = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64)
    taps = int((hi - lo).max())
    j = lo[:, None] + np.arange(taps)[None, :]
    x = np.abs((j - centers[:, None] + 0.5) / widen)
    a = -0.5
    w = np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                 np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))
    w = np.where(j < hi[:, None], w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return lo, w.astype(np.float32)


@lru_cache(maxsize=32)
def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The same weights as a dense (out, in) float32 matrix, for small sizes."""
    lo, w = resample_taps(in_size, out_size)
    out = np.zeros((out_size, in_size + w.shape[1]), dtype=np.float32)
    rows = np.arange(out_size)[:, None]
    out[rows, lo[:, None] + np.arange(w.shape[1])[None, :]] = w
    return out[:, :in_size]


def resample_last_axis(x: np.ndarray, out_size: int) -> np.ndarray:
    """Resample a float32 array (..., n) along its last axis to (..., out_size)."""
    lead, n = x.shape[:-1], x.shape[-1]
    flat = np.ascontiguousarray(x).reshape(-1, n)
    if n * out_size <= DENSE_LIMIT:
        return (flat @ resample_matrix(n, out_size).T).reshape(*lead, out_size)
    lo, w = resample_taps(n, out_size)
    taps = w.shape[1]
    out = np.empty((flat.shape[0], out_size), dtype=np.float32)
    for i in range(out_size):  # banded: memory stays (rows, taps), never (in, out)
        seg = flat[:, lo[i]:lo[i] + taps]
        out[:, i] = seg @ w[i, :seg.shape[1]]
    return out.reshape(*lead, out_size)


def _channels(frame: np.ndarray, color_order: str) -> tuple[np.ndarray, float]:
    """A view of the frame's colour planes in RGB order (H, W, 3) or gray (H, W, 1), and its value scale."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"unsupported frame shape {frame.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"empty frame of shape {frame.shape}")
    if frame.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif frame.dtype == np.uint16:
        scale = 1.0 / 65535.0
    elif frame.dtype in (np.float16, np.float32, np.float64):
        scale = 1.0
    else:
        raise ValueError(f"unsupported frame dtype {frame.dtype}: use uint8, uint16 or float in [0, 1]")
    if color_order not in ("bgr", "rgb"):
        raise ValueError(f"color order must be 'bgr' or 'rgb', got {color_order!r}")
    if frame.shape[2] >= 3:
        frame = frame[:, :, 2::-1] if color_order == "bgr" else frame[:, :, :3]
    return frame, scale


def resize_frame(frame: np.ndarray, size: tuple[int, int], color_order: str = "bgr") -> np.ndarray:
    """Any frame (gray/BGR/RGB/BGRA; 8-bit, 16-bit or float) -> RGB (3, h, w) float32 in [0, 1] units."""
    planes, scale = _channels(frame, color_order)
    h, w = planes.shape[:2]
    out_h, out_w = size
    if h * out_w <= out_h * w:  # columns first keeps the intermediate (h, out_w) the smaller one
        mid = np.empty((h, out_w, planes.shape[2]), dtype=np.float32)
        for r in range(0, h, STRIP_ROWS):
            strip = planes[r:r + STRIP_ROWS].astype(np.float32).transpose(0, 2, 1)  # (rows, c, w)
            mid[r:r + STRIP_ROWS] = resample_last_axis(strip, out_w).transpose(0, 2, 1)
        result = resample_last_axis(mid.transpose(2, 1, 0), out_h).transpose(0, 2, 1)  # (c, out_h, out_w)
    else:
        mid = np.empty((out_h, w, planes.shape[2]), dtype=np.float32)
        for c0 in range(0, w, STRIP_ROWS):
            strip = planes[:, c0:c0 + STRIP_ROWS].astype(np.float32).transpose(1, 2, 0)  # (cols, c, h)
            mid[:, c0:c0 + STRIP_ROWS] = resample_last_axis(strip, out_h).transpose(2, 0, 1)
        result = resample_last_axis(mid.transpose(2, 0, 1), out_w)  # (c, out_h, out_w)
    result = result * np.float32(scale)
    if result.shape[0] == 1:
        result = np.repeat(result, 3, axis=0)
    return np.ascontiguousarray(result, dtype=np.float32)


class Preprocessor:
    """Frames -> the graph's (B, 3, H, W) float32 input, per the manifest."""

    def __init__(self, spec: Preprocess):
        self.size = tuple(spec.input_size)
        self.mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self.inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)

    def __call__(self, frames, color_order: str = "bgr") -> np.ndarray:
        """ValueError names the first unusable frame (bad shape or dtype, NaN or infinite values)."""
        batch = np.empty((len(frames), 3, *self.size), dtype=np.float32)
        for i, frame in enumerate(frames):
            batch[i] = (resize_frame(frame, self.size, color_order) - self.mean) * self.inv_std
            if not np.isfinite(batch[i]).all():
                raise ValueError("frame holds NaN or infinite values")
        return batch
