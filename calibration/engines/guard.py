"""The accuracy guard: a candidate engine against the fp32 engine on held-out real frames.

The map is the product: a peer's int8 WinCLIP keeps image scores but ruins the
pixel maps, so the guard compares, zero-shot and few-shot, per-frame anomaly
maps (Pearson correlation at grid resolution), image scores (Spearman rank
correlation across frames) and the raw embeddings (the lowest cosine of any
one vector, per output). Frames the candidate was calibrated on are never used
here.

A map, or a set of scores, that agrees with fp32 within `close_enough`
everywhere passes whatever its correlation: on a flat map, or on scores that
all sit within noise of each other, correlation measures only rounding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from winclip.runtime.contract import output_names
from winclip.runtime.defaults import GUARD_CLOSE_ENOUGH, GUARD_LIMITS
from winclip.runtime.memory import FewShotMemory, MemoryKey


@dataclass(frozen=True)
class GuardLimits:
    """What an engine must keep of fp32 to be admitted (defaults: runtime/defaults.py GUARD_LIMITS)."""

    map_pearson_median: float = GUARD_LIMITS["map_pearson_median"]
    map_pearson_min: float = GUARD_LIMITS["map_pearson_min"]
    score_spearman: float = GUARD_LIMITS["score_spearman"]
    embedding_cosine_min: float = GUARD_LIMITS["embedding_cosine_min"]  # per output, the lowest cosine of any vector
    close_enough: float = GUARD_CLOSE_ENOUGH


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a with the same row of b; nan where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / denom


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pearson_rows(ranks(a)[None], ranks(b)[None])[0])


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_engine(backend, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's outputs by name for preprocessed batches (through a Backend), concatenated."""
    runs = [backend.run(batch) for batch in batches]
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


def _mode_report(ref_scores, cand_scores, limits: GuardLimits) -> dict:
    ref_maps = ref_scores.grid_map.reshape(len(ref_scores.grid_map), -1)
    cand_maps = cand_scores.grid_map.reshape(len(cand_scores.grid_map), -1)
    r = pearson_rows(ref_maps, cand_maps)
    map_diff = np.abs(ref_maps - cand_maps).max(axis=1)
    r = np.where(map_diff <= limits.close_enough, np.maximum(np.nan_to_num(r, nan=1.0), 1.0 - limits.close_enough), r)
    score_diff = float(np.abs(ref_scores.image_score - cand_scores.image_score).max())
    rho = spearman(ref_scores.image_score, cand_scores.image_score) if len(ref_maps) > 1 else 1.0
    if score_diff <= limits.close_enough:
        rho = max(np.nan_to_num(rho, nan=1.0), 1.0 - limits.close_enough)
    r = np.nan_to_num(r, nan=-1.0)
    return {"map_pearson_median": round(float(np.median(r)), 6), "map_pearson_min": round(float(r.min()), 6),
            "score_spearman": round(float(rho), 6), "score_max_abs_diff": round(score_diff, 6),
            "map_max_abs_diff": round(float(map_diff.max()), 6)}


def guard(reference, candidate, scorer, holdout: list[np.ndarray], memory_frames: list[np.ndarray],
          key: MemoryKey, limits: GuardLimits = GuardLimits()) -> dict:
    """Compare a candidate backend with the fp32 one on preprocessed held-out frames, zero-shot and few-shot
    (memory from memory_frames).

    Returns a JSON-able report with "passed" and every number the decision used.
    """
    ref = run_engine(reference, holdout)
    cand = run_engine(candidate, holdout)
    report = {"frames": int(sum(len(b) for b in holdout)), "memory_frames": int(sum(len(b) for b in memory_frames)),
              "limits": asdict(limits), "modes": {}}
    names = output_names(key.scales)
    report["embedding_cosine_min"] = {n: round(float(cosine_rows(ref[n], cand[n]).min()), 6) for n in names}
    report["modes"]["zero-shot"] = _mode_report(scorer(ref), scorer(cand), limits)
    if memory_frames:
        ref_memory = FewShotMemory.from_outputs(run_engine(reference, memory_frames), key)
        cand_memory = FewShotMemory.from_outputs(run_engine(candidate, memory_frames), key)
        report["modes"]["few-shot"] = _mode_report(scorer(ref, ref_memory), scorer(cand, cand_memory), limits)
    failures = []
    for mode, numbers in report["modes"].items():
        for metric in ("map_pearson_median", "map_pearson_min", "score_spearman"):
            if not numbers[metric] >= getattr(limits, metric):
                failures.append(f"{mode} {metric.replace('_', ' ')} {numbers[metric]:.4f} < {getattr(limits, metric)}")
    for name, cosine in report["embedding_cosine_min"].items():
        if not cosine >= limits.embedding_cosine_min:
            failures.append(f"embedding cosine {name} {cosine:.4f} < {limits.embedding_cosine_min}")
    report["failures"] = failures
    report["passed"] = not failures
    return report
