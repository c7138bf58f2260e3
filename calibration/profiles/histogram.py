"""A histogram picture of normal (and defect) scores with thresholds drawn on it, with OpenCV alone.

Kept dependency-free on purpose: `winclip-calibrate` runs on the edge box.
"""

from __future__ import annotations

import cv2
import numpy as np

WIDTH, HEIGHT, MARGIN = 800, 420, 60
GREEN, RED, BLUE, BLACK, GRAY = (60, 160, 60), (40, 40, 220), (200, 120, 30), (0, 0, 0), (200, 200, 200)


def score_histogram(normal: np.ndarray, defect: np.ndarray | None, thresholds: dict[str, float],
                    title: str, bins: int = 40) -> np.ndarray:
    """An 8-bit BGR picture: overlaid histograms (normal green, defect red) and vertical threshold lines."""
    values = [np.asarray(normal, dtype=np.float64)]
    if defect is not None and len(defect):
        values.append(np.asarray(defect, dtype=np.float64))
    lo = min(v.min() for v in values + [np.array(list(thresholds.values()))])
    hi = max(v.max() for v in values + [np.array(list(thresholds.values()))])
    span = max(hi - lo, 1e-6)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, edges)[0] for v in values]
    top = max(c.max() for c in counts) or 1
    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    x0, x1, y0, y1 = MARGIN, WIDTH - 20, HEIGHT - MARGIN, 40
    to_x = lambda v: int(round(x0 + (v - lo) / (hi - lo) * (x1 - x0)))  # noqa: E731
    to_y = lambda c: int(round(y0 - c / top * (y0 - y1)))  # noqa: E731
    for count, color in zip(counts, (GREEN, RED)):
        layer = img.copy()
        for i, c in enumerate(count):
            if c:
                cv2.rectangle(layer, (to_x(edges[i]), to_y(c)), (to_x(edges[i + 1]) - 1, y0), color, -1)
        img = cv2.addWeighted(layer, 0.6, img, 0.4, 0)
    cv2.line(img, (x0, y0), (x1, y0), BLACK, 1)
    cv2.line(img, (x0, y0), (x0, y1), BLACK, 1)
    for v in np.linspace(lo, hi, 6):
        cv2.putText(img, f"{v:.3f}", (to_x(v) - 20, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, f"{top}", (8, y1 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BLACK, 1, cv2.LINE_AA)
    for i, (name, value) in enumerate(thresholds.items()):
        x = to_x(value)
        cv2.line(img, (x, y0), (x, y1), BLUE, 2)
        cv2.putText(img, f"{name} {value:.4f}", (min(x + 4, WIDTH - 200), y1 + 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, BLUE, 1, cv2.LINE_AA)
    legend = f"normal ({len(values[0])})" + (f"   defect ({len(values[1])})" if len(values) > 1 else "")
    cv2.putText(img, title, (x0, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, legend, (x0, HEIGHT - 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, GRAY if len(values) == 1 else BLACK, 1,
                cv2.LINE_AA)
    return img
