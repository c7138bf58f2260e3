"""From grid maps to what people look at: pixel maps, defect regions, annotated heat-map overlays."""

from __future__ import annotations

import time
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


# Where the pixel threshold sits on the JET colour scale: below it blue to green, at and above it orange to dark
# red, with the yellow between left out so that crossing the threshold is a visible step.
BELOW_THRESHOLD = (0.0, 0.55)
ABOVE_THRESHOLD = (0.70, 1.0)


def colour_scale(anomaly_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """The map as positions on the colour scale (float32 in [0, 1]).

    Without a threshold: the map's own values (a fixed 0..1 scale). With one: values
    below it run from the frame's lowest value to the threshold over the cold colours,
    values at or above it from the threshold to the frame's peak over the hot ones. A
    model whose scores sit in a narrow band still shows where the threshold is passed,
    and a good part (nothing at or above it) never shows red.
    """
    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0)
    if threshold is None:
        return np.clip(amap, 0.0, 1.0)
    t = float(threshold)
    lo, hi = min(float(amap.min()), t), max(float(amap.max()), t)
    below = BELOW_THRESHOLD[0] + (amap - lo) / max(t - lo, 1e-12) * (BELOW_THRESHOLD[1] - BELOW_THRESHOLD[0])
    above = ABOVE_THRESHOLD[0] + (amap - t) / max(hi - t, 1e-12) * (ABOVE_THRESHOLD[1] - ABOVE_THRESHOLD[0])
    return np.clip(np.where(amap >= t, above, below), 0.0, 1.0).astype(np.float32)


def heatmap_overlay(frame: np.ndarray, anomaly_map: np.ndarray, color_order: str = "bgr",
                    alpha: float = 0.5, threshold: float | None = None) -> np.ndarray:
    """8-bit BGR image: the frame under a JET heat map of the map, coloured relative to `threshold`
    (see colour_scale), or on a fixed 0..1 scale without one (never a min-max stretch, which would
    paint every good part red somewhere)."""
    base = to_bgr8(frame, color_order)
    heat = cv2.applyColorMap((colour_scale(anomaly_map, threshold) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
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


# The label: light text on a near-black band (readable on any heat map), in the corner that covers no region.
LABEL_BAND = (24, 24, 24)
LABEL_TEXT = (255, 255, 255)
VERDICT_TEXT = {True: (110, 110, 255), False: (130, 235, 130), None: (255, 255, 255)}  # light red, light green
CAPTION_TEXT = (210, 210, 210)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _label_parts(score: float, anomalous: bool | None, caption: str | None) -> list[tuple[str, tuple]]:
    verdict = {True: "ANOMALOUS", False: "good", None: ""}[anomalous]
    parts = [(f"{score:.3f}", LABEL_TEXT)]
    if verdict:
        parts.append((verdict, VERDICT_TEXT[anomalous]))
    if caption:
        parts.append((caption, CAPTION_TEXT))
    return parts


def _overlap(box, regions, margin: int) -> int:
    x, y, w, h = box
    total = 0
    for r in regions:
        ox = min(x + w, r.x + r.width + margin) - max(x, r.x - margin)
        oy = min(y + h, r.y + r.height + margin) - max(y, r.y - margin)
        total += max(0, ox) * max(0, oy)
    return total


def annotate(image: np.ndarray, regions: list[Region] | None, score: float | None, anomalous: bool | None,
             caption: str | None = None) -> np.ndarray:
    """Outline the regions and label the score, the verdict and an optional caption (a capture time) on an
    8-bit BGR image (in place; returned). The label sits on a dark band in the corner that covers the
    fewest region pixels (none where any corner is free), sized for the picture but never below a
    legible minimum; a caption that does not fit is shortened (time without date), then left out."""
    h, w = image.shape[:2]
    scale = max(h, w) / 640.0
    thick = max(1, round(2 * scale))
    for r in regions or []:
        cv2.rectangle(image, (r.x, r.y), (r.x + r.width - 1, r.y + r.height - 1), (255, 255, 255), thick + 1)
        cv2.rectangle(image, (r.x, r.y), (r.x + r.width - 1, r.y + r.height - 1), (0, 0, 255), thick)
    if score is None:
        return image
    font_scale = min(1.2, max(0.5, 0.65 * scale))
    weight = max(1, round(1.6 * font_scale))
    pad = max(3, round(5 * font_scale))
    parts = _label_parts(score, anomalous, caption)
    while True:
        sizes = [cv2.getTextSize(text, FONT, font_scale, weight) for text, _ in parts]
        gap = cv2.getTextSize(" ", FONT, font_scale, weight)[0][0]
        text_w = sum(s[0][0] for s in sizes) + gap * (len(parts) - 1)
        text_h = max(s[0][1] for s in sizes)
        base = max(s[1] for s in sizes)
        box_w, box_h = text_w + 2 * pad, text_h + base + 2 * pad
        if box_w <= w or len(parts) == 1:
            break
        last, colour = parts[-1]
        if last == caption and " " in last:  # a date and time: the time alone first
            caption = last.rsplit(" ", 1)[1]
            parts[-1] = (caption, colour)
        else:
            parts = parts[:-1]  # then the caption, then the verdict: the score always stays
    box_w, box_h = min(box_w, w), min(box_h, h)
    corners = [(0, 0), (w - box_w, 0), (0, h - box_h), (w - box_w, h - box_h)]
    x0, y0 = min(corners, key=lambda c: _overlap((c[0], c[1], box_w, box_h), regions or [], thick + 2))
    cv2.rectangle(image, (x0, y0), (x0 + box_w - 1, y0 + box_h - 1), LABEL_BAND, -1)
    x, y = x0 + pad, y0 + pad + text_h
    for (text, colour), ((tw, _), _) in zip(parts, sizes):
        cv2.putText(image, text, (x, y), FONT, font_scale, colour, weight, cv2.LINE_AA)
        x += tw + gap
    return image


def capture_caption(captured: float | None) -> str | None:
    """A capture time (Unix seconds) as the overlay shows it: local date and time to the second."""
    if captured is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(captured))


def render_overlay(image: np.ndarray, result, max_width: int | None = None, captured: float | None = None) -> np.ndarray:
    """The annotated heat-map overlay of a scored frame, 8-bit BGR; shrunk first to `max_width` when wider.

    Colours are relative to the result's pixel threshold (else its image threshold),
    and `captured` (Unix seconds) stamps the label with the capture time. Shrinking
    the frame and the map before drawing keeps a preview cheap (the heat map and the
    JPEG cost follow the pixels drawn).
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
    threshold = getattr(result, "pixel_threshold", None)
    if threshold is None:
        threshold = getattr(result, "threshold", None)
    return annotate(heatmap_overlay(image, amap, threshold=threshold), regions, result.image_score, result.anomalous,
                    capture_caption(captured))
