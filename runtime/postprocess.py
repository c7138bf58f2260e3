"""From grid maps to what people look at: pixel maps, heat-map overlays."""

from __future__ import annotations

import cv2
import numpy as np


def upsample_map(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, half-pixel centres (align_corners=False), as torch's interpolate; float32 (height, width)."""
    return cv2.resize(np.asarray(grid_map, dtype=np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def to_bgr8(frame: np.ndarray, color_order: str = "bgr") -> np.ndarray:
    """An 8-bit BGR copy of any frame the detector accepts (for drawing on)."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        frame = (np.nan_to_num(frame.astype(np.float32), nan=0.0).clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    frame = frame[:, :, :3]
    return np.ascontiguousarray(frame[:, :, ::-1] if color_order == "rgb" else frame)


def heatmap_overlay(frame: np.ndarray, anomaly_map: np.ndarray, color_order: str = "bgr",
                    alpha: float = 0.5) -> np.ndarray:
    """8-bit BGR image: the frame under a JET heat map of the map on a fixed 0..1 scale.

    A fixed scale keeps colours comparable between frames (a min-max stretch would
    paint every good part as red somewhere).
    """
    base = to_bgr8(frame, color_order)
    heat = cv2.applyColorMap((np.clip(anomaly_map, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(heat, alpha, base, 1.0 - alpha, 0.0)
