"""Bounded few-shot memory: greedy k-center (farthest-point) selection of feature rows.

A WinCLIP+ memory that learns from the line grows by one image's rows per taught
part. Past a cap, a memory keeps the rows that cover the rest best: greedy
farthest-point selection (Gonzalez), a 2-approximation of the smallest k-center
cover. Its covering radius bounds how much any score can change: a dropped row
lies within the radius of a kept one, so the nearest kept row of any query is at
most that much farther (in Euclidean distance between unit vectors) than the
nearest row of the full memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Which rows a k-center pass kept, and the cover it gives."""

    kept: np.ndarray  # sorted row indices
    radius: float  # largest (1 - cosine) from any input row to its nearest kept row


def k_center(rows: np.ndarray, k: int, first: int = 0) -> Selection:
    """Greedy farthest-point selection of k of the unit `rows` (N, D), starting from row `first`."""
    rows = np.asarray(rows, dtype=np.float32)
    n = rows.shape[0]
    if k >= n:
        return Selection(np.arange(n), 0.0)
    if k < 1:
        raise ValueError(f"k-center needs k >= 1, got {k}")
    kept = np.empty(k, dtype=np.int64)
    kept[0] = first
    distance = 1.0 - rows @ rows[first]  # 1 - cosine to the nearest kept row, per row
    for i in range(1, k):
        j = int(np.argmax(distance))
        kept[i] = j
        np.minimum(distance, 1.0 - rows @ rows[j], out=distance)
    return Selection(np.sort(kept), float(max(distance.max(), 0.0)))
