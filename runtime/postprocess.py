"""From grid maps to what people look at: pixel maps, defect regions, annotated heat-map overlays."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Region:
    """A connected area of the pixel map at or above the pixel threshold, in frame pixels."""

    x: int
    y: int
    width: int
    height: int
    area: int  # pixels above the threshold
    peak: float  # highest map value inside

    def to_json(self) -> dict:
        return {"box": [self.x, self.y, self.width, self.height], "area": self.area, "peak": round(self.peak, 6)}


def find_regions(anomaly_map: np.ndarray, threshold: float, limit: int = 32) -> list[Region]:
    """Connected regions (8-neighbour) of map >= threshold, largest first, at most `limit`."""
    mask = (anomaly_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:limit]
    regions = []
    for i in order:
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        peak = float(anomaly_map[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i].max())
        regions.append(Region(x, y, w, h, area, peak))
    return regions


def annotate(image: np.ndarray, regions: list[Region] | None, score: float | None, anomalous: bool | None) -> np.ndarray:
    """Outline the regions and write the score and verdict on an 8-bit BGR image (in place; returned)."""
    scale = max(image.shape[:2]) / 640.0
    thick = max(1, round(2 * scale))
    for r in regions or []:
        cv2.rectangle(image, (r.x, r.y), (r.x + r.width - 1, r.y + r.height - 1), (255, 255, 255), thick + 1)
        cv2.rectangle(image, (r.x, r.y), (r.x + r.width - 1, r.y + r.height - 1), (0, 0, 255), thick)
    if score is not None:
        verdict = {True: "ANOMALOUS", False: "good", None: ""}[anomalous]
        text = f"{score:.3f} {verdict}".strip()
        font_scale = max(0.4, 0.6 * scale)
        org = (max(2, round(6 * scale)), max(12, round(24 * scale)))
        color = (0, 0, 255) if anomalous else (0, 200, 0) if anomalous is False else (255, 255, 255)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, thick, cv2.LINE_AA)
    return image


def render_overlay(image: np.ndarray, result, max_width: int | None = None) -> np.ndarray:
    """The annotated heat-map overlay of a scored frame, 8-bit BGR; shrunk first to `max_width` when wider.

    Shrinking the frame and the map before drawing keeps a preview cheap (the
    heat map and the JPEG cost follow the pixels drawn).
    """
    amap, regions = result.anomaly_map, result.regions
    width = image.shape[1]
    if max_width is not None and width > max_width:
        scale = max_width / width
        size = (max_width, max(1, round(image.shape[0] * scale)))
        image = cv2.resize(to_bgr8(image), size, interpolation=cv2.INTER_AREA)
        amap = cv2.resize(amap, size, interpolation=cv2.INTER_LINEAR)
        regions = None if regions is None else [
            Region(round(r.x * scale), round(r.y * scale), max(1, round(r.width * scale)),
                   max(1, round(r.height * scale)), r.area, r.peak) for r in regions]
    return annotate(heatmap_overlay(image, amap), regions, result.image_score, result.anomalous)
