"""One engine pass over a category's test images, and every later scoring of it from the cache.

The engine is ~99% of an evaluation's time and its outputs do not depend on the
few-shot memory, so they are computed once per test image and kept in
memory-mapped .npy files (float32, ~1.7 MB an image for ViT-B-16+); each setting
re-scores them with the runtime's own scorer and its own memory, one batch at a
time, and upsamples the grid maps straight to the pixel size as float16.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from winclip.calibration.evaluation.layouts import Category, Sample
from winclip.runtime.detector import Detector
from winclip.runtime.errors import first_line
from winclip.runtime.images import ImageReadError, display_path, read_image
from winclip.runtime.postprocess import upsample_map


class OutputCache:
    """The engine's raw outputs for a category's test images, in memory-mapped .npy files."""

    def __init__(self, folder: Path, capacity: int):
        self.folder, self.capacity, self.count, self.arrays = folder, capacity, 0, {}

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        n = len(next(iter(outputs.values())))
        for name, value in outputs.items():
            if name not in self.arrays:
                self.arrays[name] = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=value.dtype,
                                                              shape=(self.capacity, *value.shape[1:]))
            self.arrays[name][self.count:self.count + n] = value
        self.count += n

    def batches(self, size: int):
        for i in range(0, self.count, size):
            yield i, {name: np.asarray(a[i:min(i + size, self.count)]) for name, a in self.arrays.items()}

    def close(self) -> None:
        self.arrays = {}  # the last references: the maps are unmapped and their files can go


def read_mask(sample: Sample, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The sample's mask (nonzero = defect) resized with nearest neighbour; ImageReadError with the reason."""
    mask = read_image(sample.mask)
    if mask.shape[:2] != shape:
        raise ImageReadError(f"{display_path(sample.mask)}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                             f"{display_path(sample.path)} is {shape[1]}x{shape[0]}")
    mask = mask if mask.ndim == 2 else mask.max(axis=2)
    return cv2.resize((mask > 0).astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0


def embed_rows(detector: Detector, frames: list[np.ndarray]) -> list[dict | str]:
    """One session call; per frame its outputs (1-row arrays) or why it cannot be scored."""
    try:
        outputs, _ = detector.embed(frames)
    except ValueError as exc:  # a frame the preprocessing refuses: find which, one at a time
        if len(frames) == 1:
            return [first_line(exc)]
        return [row for frame in frames for row in embed_rows(detector, [frame])]
    rows = []
    for j in range(len(frames)):
        row = {name: value[j:j + 1] for name, value in outputs.items()}
        finite = all(np.isfinite(v).all() for v in row.values())
        rows.append(row if finite else "the engine gave an output that is not a finite number")
    return rows


def embed_test_set(detector: Detector, category: Category, size, batch_size: int, cache: OutputCache,
                   progress, skipped: list[str]) -> tuple[list[Sample], np.ndarray | None, float]:
    """Run the engine over the test images that can be read; (kept samples, their masks, engine seconds)."""
    kept, masks, seconds = [], [], 0.0
    for start in range(0, len(category.test), batch_size):
        batch = category.test[start:start + batch_size]
        pending = []
        for sample in batch:
            try:
                image = read_image(sample.path)
                mask = None
                if category.has_masks:
                    mask = read_mask(sample, image.shape[:2], size) if sample.label else np.zeros(size, bool)
            except ImageReadError as exc:
                skipped.append(str(exc))
                continue
            pending.append((sample, image, mask))
        if pending:
            t0 = time.perf_counter()
            rows = embed_rows(detector, [image for _, image, _ in pending])
            seconds += time.perf_counter() - t0
            for (sample, _, mask), row in zip(pending, rows):
                if isinstance(row, str):
                    skipped.append(f"{display_path(sample.path)}: {row}")
                    continue
                cache.append(row)
                kept.append(sample)
                masks.append(mask)
        progress(len(batch))
    return kept, (np.stack(masks) if category.has_masks and masks else None), seconds


def score_cached(detector: Detector, cache: OutputCache, size, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (float64) and pixel maps (float16 at the pixel size) of every cached test image."""
    scores = np.empty(cache.count)
    maps = np.empty((cache.count, *size), np.float16)
    for start, outputs in cache.batches(batch):
        result = detector.scorer(outputs, detector.memory)
        scores[start:start + len(result.image_score)] = result.image_score
        for j, grid in enumerate(result.grid_map):
            maps[start + j] = upsample_map(grid, *size)
    return scores, maps
