"""Detection metrics on scores, with scikit-learn where it has them, and the table of the six that are reported.

Image level: AUROC and average precision (scikit-learn), F1-max (the best F1
over all thresholds, with the threshold that gives it). Pixel level: the same
on every pixel, and PRO (the per-region overlap, docs/evaluation.md).

`METRICS` is the one table evaluation, the report, the CSV and the JSON read:
a new metric is one function and one row (name, column header, level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from winclip.runtime.errors import MissingExtra, install_hint
from winclip.runtime.thresholds import threshold_for_false_alarm_rate  # noqa: F401  (one rule, stated in the core)

PRO_MAX_FPR = 0.3  # PRO integrates up to this false-positive rate (the paper's and MVTec's convention)


def require_sklearn():
    """scikit-learn's metrics module, or MissingExtra naming the extra (call it before long work)."""
    try:
        import sklearn.metrics as metrics
    except ImportError:
        raise MissingExtra(f"metrics need scikit-learn: {install_hint('eval')}") from None
    return metrics


_sklearn = require_sklearn


def auroc(labels: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve; labels 1 = anomalous. Needs both classes."""
    return float(_sklearn().roc_auc_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64),
                                          sample_weight=sample_weight))


def average_precision(labels: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    return float(_sklearn().average_precision_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64),
                                                    sample_weight=sample_weight))


def f1_max(labels: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> tuple[float, float]:
    """(best F1 over all thresholds, the threshold that gives it: anomalous when score >= threshold)."""
    precision, recall, thresholds = _sklearn().precision_recall_curve(np.asarray(labels, dtype=int),
                                                                      np.asarray(scores, dtype=np.float64),
                                                                      sample_weight=sample_weight)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0  # the last point has no threshold
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else float("nan")


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of the ROC curve, for plotting."""
    fpr, tpr, _ = _sklearn().roc_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def counts_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """What a fixed threshold does on labelled data (anomalous when score >= threshold)."""
    labels = np.asarray(labels).astype(bool).ravel()
    flagged = (np.asarray(scores, dtype=np.float64) >= threshold).ravel()
    tp, fp = int(np.sum(flagged & labels)), int(np.sum(flagged & ~labels))
    fn, tn = int(np.sum(~flagged & labels)), int(np.sum(~flagged & ~labels))
    ratio = lambda a, b: a / b if b else None  # noqa: E731  (undefined, not zero, when nothing is counted)
    return {"threshold": float(threshold), "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "true_negatives": tn, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "false_alarm_rate": ratio(fp, fp + tn)}


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """1 / (area of its ground-truth region) for every defect pixel, in C order, and the number of regions.

    Regions are the 8-connected components of each image's mask, so each region
    counts once in the mean overlap however large it is.
    """
    weights, regions = [], 0
    for mask in np.asarray(masks, dtype=bool):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        areas = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        weights.append(1.0 / areas[labels[mask]])
        regions += count - 1
    return (np.concatenate(weights) if weights else np.zeros(0)), regions


def ranked(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values ascending, as float64; each score's index among them, int32).

    float16 maps go through a 65,536-entry table instead of a sort: linear time
    and 4 bytes a pixel, which is what lets a category's pixel metrics run on
    hundreds of maps at once.
    """
    flat = np.asarray(scores).ravel()
    if flat.dtype != np.float16:
        values, rank = np.unique(flat, return_inverse=True)
        return values.astype(np.float64), rank.astype(np.int32).ravel()
    bits = (flat + np.float16(0)).view(np.uint16)  # -0 becomes +0: one value, one code
    codes = np.flatnonzero(np.bincount(bits, minlength=1 << 16)).astype(np.uint16)
    values = codes.view(np.float16).astype(np.float64)
    order = np.argsort(values, kind="stable")
    lookup = np.zeros(1 << 16, np.int32)
    lookup[codes[order]] = np.arange(len(codes), dtype=np.int32)
    return values[order], lookup[bits]


@dataclass
class PixelTally:
    """Every pixel of a set of maps, merged by score: per distinct value, the defect and defect-free pixel counts.

    Threshold metrics only see how many pixels of each label lie at or above each
    threshold, so scikit-learn's AUROC and F1-max on these weighted values are
    exactly those on every pixel, at a fraction of the memory.
    """

    values: np.ndarray  # distinct scores, ascending
    defect: np.ndarray  # defect pixels with each value
    normal: np.ndarray  # defect-free pixels with each value
    rank: np.ndarray  # each pixel's index into values

    @classmethod
    def of(cls, masks: np.ndarray, maps: np.ndarray) -> "PixelTally":
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != np.shape(maps):
            raise ValueError(f"masks {masks.shape} and maps {np.shape(maps)} differ in shape")
        values, rank = ranked(maps)
        defect = np.bincount(rank[masks.ravel()], minlength=len(values))
        return cls(values, defect, np.bincount(rank, minlength=len(values)) - defect, rank)

    def weighted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, scores, sample weights) with one sample per (value, label) that occurs."""
        d, n = self.defect > 0, self.normal > 0
        return (np.r_[np.ones(d.sum(), int), np.zeros(n.sum(), int)], np.r_[self.values[d], self.values[n]],
                np.r_[self.defect[d], self.normal[n]].astype(np.float64))


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> tuple[dict, tuple]:
    """The pixel-level metrics of the table on (N, H, W) masks and maps, and the PRO curve."""
    pixels = PixelSet(masks, maps)
    return {m.name: m.compute(pixels) for m in METRICS.values() if m.level == "pixel"}, pixels.pro


def pro_curve(masks: np.ndarray, maps: np.ndarray, tally: PixelTally | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve at every threshold: (false-positive rate, mean region overlap).

    masks: (N, H, W) ground truth (nonzero = defect); maps: (N, H, W) scores. At a
    threshold t the false-positive rate is the share of all defect-free pixels with
    a score >= t, and the PRO the mean over all regions of the share of the region's
    pixels with a score >= t. Exact at every distinct score value, from (0, 0) to (1, 1).
    """
    masks = np.asarray(masks, dtype=bool)
    tally = tally or PixelTally.of(masks, maps)
    weights, regions = region_weights(masks)
    negatives = int(tally.normal.sum())
    if regions == 0 or negatives == 0:
        raise ValueError("PRO needs at least one defect region and one defect-free pixel")
    overlap = np.bincount(tally.rank[masks.ravel()], weights=weights, minlength=len(tally.values))
    # thresholds from the highest score down: each step admits every pixel of that score
    pro = np.r_[0.0, np.cumsum(overlap[::-1]) / regions]
    fpr = np.r_[0.0, np.cumsum(tally.normal[::-1]) / negatives]
    return fpr, np.minimum(pro, 1.0)


def area_up_to(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    """Area under a curve from x = 0 to x = limit (trapezoids, the point at the limit interpolated)."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    inside = fpr <= limit
    x, y = fpr[inside], tpr[inside]
    if x[-1] < limit and inside.sum() < len(fpr):
        nxt = int(np.argmax(~inside))
        x0, x1, y0, y1 = fpr[nxt - 1], fpr[nxt], tpr[nxt - 1], tpr[nxt]
        x, y = np.r_[x, limit], np.r_[y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def pro_score(masks: np.ndarray, maps: np.ndarray, max_fpr: float = PRO_MAX_FPR) -> float:
    """PRO: the area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr` (1 = perfect)."""
    fpr, pro = pro_curve(masks, maps)
    return area_up_to(fpr, pro, max_fpr) / max_fpr


@dataclass
class PixelSet:
    """The masks and maps of a run with what every pixel metric reads, computed once: the tally and the PRO curve."""

    masks: np.ndarray  # (N, H, W) bool
    maps: np.ndarray  # (N, H, W) scores
    tally: PixelTally = field(init=False)
    weighted: tuple = field(init=False)  # (labels, scores, weights) of the tally
    pro: tuple = field(init=False)  # (fpr, per-region overlap)

    def __post_init__(self):
        self.masks = np.asarray(self.masks, dtype=bool)
        self.tally = PixelTally.of(self.masks, self.maps)
        self.weighted = self.tally.weighted()
        self.pro = pro_curve(self.masks, self.maps, self.tally)


@dataclass(frozen=True)
class Metric:
    """One row of the table: `compute(labels, scores)` at image level, `compute(PixelSet)` at pixel level."""

    name: str  # the key in results.json / results.csv
    header: str  # the column in results.md and the HTML report
    level: str  # "image" or "pixel"
    compute: Callable


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("image_auroc", "AUROC", "image", auroc),
    Metric("image_ap", "AUPR", "image", average_precision),
    Metric("image_f1_max", "F1-max", "image", lambda labels, scores: f1_max(labels, scores)[0]),
    Metric("pixel_auroc", "pAUROC", "pixel", lambda px: auroc(*px.weighted)),
    Metric("pixel_pro", "PRO", "pixel", lambda px: area_up_to(*px.pro, PRO_MAX_FPR) / PRO_MAX_FPR),
    Metric("pixel_f1_max", "pF1-max", "pixel", lambda px: f1_max(*px.weighted)[0]),
)}
