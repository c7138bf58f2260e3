"""Heat-map overlays for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from winclip.runtime.preprocess import to_rgb_float


def heatmap_overlay(frame: np.ndarray, anomaly_map: np.ndarray, color_order: str = "bgr",
                    alpha: float = 0.5) -> np.ndarray:
    """8-bit BGR image: the frame under a JET heat map of the map on a fixed 0..1 scale.

    A fixed scale keeps colours comparable between frames (a min-max stretch would
    paint every good part as red somewhere).
    """
    base = (to_rgb_float(frame, color_order)[:, :, ::-1] * 255.0).clip(0, 255).astype(np.uint8)
    heat = cv2.applyColorMap((np.clip(anomaly_map, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(heat, alpha, base, 1.0 - alpha, 0.0)
