"""Detection metrics on scores, with scikit-learn where it has them.

Image level: AUROC and average precision (scikit-learn), F1-max (the best F1
over all thresholds, with the threshold that gives it).
"""

from __future__ import annotations

import numpy as np


def _sklearn():
    try:
        import sklearn.metrics as metrics
    except ImportError:
        raise ImportError("metrics need scikit-learn: pip install 'winclip-edge[eval]'") from None
    return metrics


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; labels 1 = anomalous. Needs both classes."""
    return float(_sklearn().roc_auc_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(_sklearn().average_precision_score(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best F1 over all thresholds, the threshold that gives it: anomalous when score >= threshold)."""
    precision, recall, thresholds = _sklearn().precision_recall_curve(np.asarray(labels, dtype=int),
                                                                      np.asarray(scores, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0  # the last point has no threshold
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else float("nan")


def threshold_for_false_alarm_rate(normal_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold at which at most `rate` of these normal scores are flagged (score >= threshold).

    With n normals, floor(rate * n) of them may be flagged: the threshold sits just
    above the next-highest normal score.
    """
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(rate * len(scores) + 1e-9))
    if allowed >= len(scores):
        return float(scores[-1])
    return float(min(np.nextafter(scores[allowed], np.inf), 1.0))
