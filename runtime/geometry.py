"""Window geometry: the one place that says which patches a window holds.

The export builds the ONNX graph's token-gather table from these functions and
the runtime builds its patch x window incidence matrices from the same ones, so
the two sides cannot disagree about window order or content.
"""

from __future__ import annotations

import numpy as np


def window_patch_indices(grid: tuple[int, int], scale: int, stride: int = 1) -> np.ndarray:
    """Flat patch indices of every ``scale x scale`` window of a patch grid.

    Returns an int64 array (n_windows, scale * scale). Windows are ordered
    row-major by their top-left corner; patches inside a window row-major too.
    Patch index = row * grid_width + column.
    """
    rows, cols = int(grid[0]), int(grid[1])
    if scale < 1 or scale > min(rows, cols):
        raise ValueError(f"window scale {scale} does not fit a {rows}x{cols} patch grid")
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")
    top = np.arange(0, rows - scale + 1, stride)
    left = np.arange(0, cols - scale + 1, stride)
    corner_r, corner_c = np.meshgrid(top, left, indexing="ij")
    off_r, off_c = np.meshgrid(np.arange(scale), np.arange(scale), indexing="ij")
    r = corner_r.reshape(-1, 1) + off_r.reshape(1, -1)
    c = corner_c.reshape(-1, 1) + off_c.reshape(1, -1)
    return (r * cols + c).astype(np.int64)


def window_count(grid: tuple[int, int], scale: int, stride: int = 1) -> int:
    return int(window_patch_indices(grid, scale, stride).shape[0])


def window_token_table(grid: tuple[int, int], scale: int, stride: int = 1) -> np.ndarray:
    """Token positions of each window's sequence [class token, its patches].

    Positions index the embedded sequence [class, patch_0, ..., patch_{P-1}], so
    class is 0 and patch p is p + 1. Shape (n_windows, 1 + scale * scale).
    """
    patches = window_patch_indices(grid, scale, stride) + 1
    cls = np.zeros((patches.shape[0], 1), dtype=np.int64)
    return np.concatenate([cls, patches], axis=1)


def incidence_matrix(grid: tuple[int, int], scale: int, stride: int = 1) -> np.ndarray:
    """Float64 (n_windows, n_patches) matrix, 1 where a window covers a patch."""
    idx = window_patch_indices(grid, scale, stride)
    out = np.zeros((idx.shape[0], int(grid[0]) * int(grid[1])), dtype=np.float64)
    np.put_along_axis(out, idx, 1.0, axis=1)
    return out


def uncovered_patches(grid: tuple[int, int], scale: int, stride: int = 1) -> int:
    """How many patches no window of this scale and stride covers (0 for a usable geometry)."""
    covered = np.zeros(int(grid[0]) * int(grid[1]), dtype=bool)
    covered[window_patch_indices(grid, scale, stride).ravel()] = True
    return int((~covered).sum())
