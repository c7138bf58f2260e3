"""Thresholds from normal scores: the one rule that `winclip-calibrate` and a taught line profile share."""

from __future__ import annotations

import numpy as np


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
