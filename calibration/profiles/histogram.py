"""The calibration picture: histograms of normal (and defect) scores with every threshold drawn, with OpenCV alone.

Kept dependency-free on purpose: `winclip-calibrate` runs on the edge box. One
panel per kind of score (image scores with the image and F1-max thresholds; the
per-part maximum of the pixel map with the pixel threshold). Every threshold is
a bin edge, so no bar straddles one, and the normal parts at or above a
threshold (the false alarms) are drawn in their own colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

WIDTH, PANEL_HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 800, 300, 70, 20, 46, 52
GREEN, ORANGE, RED, BLUE, BLACK, GRAY = (60, 160, 60), (0, 140, 255), (40, 40, 220), (200, 120, 30), (0, 0, 0), (90, 90, 90)
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Panel:
    """One histogram: what is counted, the scores of normal (and defect) parts, and the thresholds on that scale."""

    title: str
    xlabel: str
    normal: np.ndarray
    defect: np.ndarray | None = None
    thresholds: dict[str, float] = field(default_factory=dict)  # name -> value (None values are left out)


def histogram_picture(panels: list[Panel], bins: int = 40) -> np.ndarray:
    """An 8-bit BGR picture: the panels stacked top to bottom."""
    return np.concatenate([_panel(p, bins) for p in panels], axis=0)


def _edges(values: list[np.ndarray], thresholds: list[float], bins: int) -> np.ndarray:
    lo = min([float(v.min()) for v in values] + thresholds)
    hi = max([float(v.max()) for v in values] + thresholds)
    span = max(hi - lo, 1e-6)
    edges = np.linspace(lo - 0.05 * span, hi + 0.05 * span, bins + 1)
    return np.unique(np.r_[edges, thresholds])  # a threshold is always an edge: no bar straddles it


def _panel(panel: Panel, bins: int) -> np.ndarray:
    thresholds = {k: float(v) for k, v in panel.thresholds.items() if v is not None}
    normal = np.asarray(panel.normal, dtype=np.float64)
    defect = None if panel.defect is None or not len(panel.defect) else np.asarray(panel.defect, dtype=np.float64)
    values = [normal] + ([defect] if defect is not None else [])
    edges = _edges(values, list(thresholds.values()), bins)
    lowest = min(thresholds.values()) if thresholds else np.inf
    # normal parts below every threshold / normal parts at or above one (false alarms) / defects
    layers = [(np.histogram(normal[normal < lowest], edges)[0], GREEN),
              (np.histogram(normal[normal >= lowest], edges)[0], ORANGE)]
    if defect is not None:
        layers.append((np.histogram(defect, edges)[0], RED))
    top = max(1, max(int(c.max()) for c, _ in layers))
    img = np.full((PANEL_HEIGHT, WIDTH, 3), 255, np.uint8)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, PANEL_HEIGHT - BOTTOM, TOP
    lo, hi = float(edges[0]), float(edges[-1])
    to_x = lambda v: int(round(x0 + (v - lo) / (hi - lo) * (x1 - x0)))  # noqa: E731
    to_y = lambda c: int(round(y0 - c / top * (y0 - y1)))  # noqa: E731
    for counts, color in layers:
        layer = img.copy()
        for i, c in enumerate(counts):
            if c:
                cv2.rectangle(layer, (to_x(edges[i]), to_y(c)), (max(to_x(edges[i]), to_x(edges[i + 1]) - 1), y0),
                              color, -1)
        img = cv2.addWeighted(layer, 0.65, img, 0.35, 0)
    cv2.line(img, (x0, y0), (x1, y0), BLACK, 1)
    cv2.line(img, (x0, y0), (x0, y1), BLACK, 1)
    for v in np.linspace(lo, hi, 6):
        cv2.line(img, (to_x(v), y0), (to_x(v), y0 + 4), BLACK, 1)
        cv2.putText(img, f"{v:.3f}", (to_x(v) - 20, y0 + 17), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    for c in (0, top):
        cv2.putText(img, str(c), (x0 - 8 - 9 * len(str(c)), to_y(c) + 4), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, panel.xlabel, ((x0 + x1) // 2 - 4 * len(panel.xlabel), PANEL_HEIGHT - 12), FONT, 0.45, BLACK, 1,
                cv2.LINE_AA)
    ylabel = np.full((18, 60, 3), 255, np.uint8)  # "parts", written sideways beside the count axis
    cv2.putText(ylabel, "parts", (4, 13), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    rotated = cv2.rotate(ylabel, cv2.ROTATE_90_COUNTERCLOCKWISE)
    yc = (y0 + y1) // 2 - rotated.shape[0] // 2
    img[yc:yc + rotated.shape[0], 6:6 + rotated.shape[1]] = rotated
    for i, (name, value) in enumerate(sorted(thresholds.items(), key=lambda kv: kv[1])):
        x = to_x(value)
        cv2.line(img, (x, y0), (x, y1), BLUE, 2)
        label = f"{name} {value:.4f}"
        lx = min(x + 4, WIDTH - RIGHT - 8 * len(label))
        cv2.putText(img, label, (lx, y1 + 12 + 15 * i), FONT, 0.42, BLUE, 1, cv2.LINE_AA)
    false_alarms = int((normal >= lowest).sum()) if thresholds else 0
    legend = [(f"normal below threshold ({len(normal) - false_alarms})", GREEN)]
    if thresholds:
        legend.append((f"normal at/above: false alarms ({false_alarms})", ORANGE))
    if defect is not None:
        legend.append((f"defect ({len(defect)})", RED))
    cv2.putText(img, panel.title, (x0, 18), FONT, 0.52, BLACK, 1, cv2.LINE_AA)
    x = x0
    for text, color in legend:
        cv2.rectangle(img, (x, 26), (x + 10, 36), color, -1)
        cv2.putText(img, text, (x + 14, 35), FONT, 0.4, GRAY, 1, cv2.LINE_AA)
        x += 24 + 7 * len(text)
    return img
