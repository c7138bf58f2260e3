"""WinCLIP / WinCLIP+ scoring in vectorised numpy (no loop over patches or windows).

Inputs are the graph's raw outputs; the math follows docs in
shared/reference/winclip.md: zero-shot probabilities with a temperature,
harmonic aggregation of window scores onto patches through a fixed incidence
matrix, harmonic fusion of scales, and the WinCLIP+ nearest-memory association.
Computed in float64: it costs little at these sizes and keeps the runtime well
inside its 1e-4 agreement with the torch reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from winclip.runtime.bundle import IMAGE_EMBEDDING, PATCH_FEATURES, window_output_name
from winclip.runtime.geometry import incidence_matrix

SCORE_FLOOR = 1e-12  # harmonic means treat scores below this as this


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class ReferenceMemory:
    """WinCLIP+ memory of K normal images: unit vectors per window scale and patches."""

    windows: dict[int, np.ndarray]  # scale -> (K * n_windows, D)
    patches: np.ndarray  # (K * n_patches, C)
    shots: int


@dataclass
class Scores:
    image_score: np.ndarray  # (B,)
    grid_map: np.ndarray  # (B, gh, gw) the fused map (zero-shot alone without memory)
    zero_shot_score: np.ndarray  # (B,)
    zero_shot_map: np.ndarray  # (B, gh, gw)
    few_shot_map: np.ndarray | None  # (B, gh, gw)


class WinClipScorer:
    def __init__(self, grid: tuple[int, int], scales: list[int], stride: int,
                 text_prototypes: np.ndarray, temperature: float):
        self.grid = grid
        self.scales = list(scales)
        self.text = l2_normalize(text_prototypes)  # (2, D): normal, anomalous
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.incidence = {k: incidence_matrix(grid, k, stride) for k in self.scales}
        self.coverage = {k: inc.sum(axis=0) for k, inc in self.incidence.items()}
        for k, cover in self.coverage.items():
            if not cover.all():  # a harmonic mean over no windows is undefined
                raise ValueError(f"scale-{k} windows at stride {stride} leave patches uncovered")

    def probability(self, embeddings: np.ndarray) -> np.ndarray:
        """softmax([cos(e, t_n), cos(e, t_a)] / tau)[1], written as a stable sigmoid."""
        cos = l2_normalize(embeddings) @ self.text.T
        z = (cos[..., 1] - cos[..., 0]) / self.temperature
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    def harmonic(self, window_scores: np.ndarray, scale: int) -> np.ndarray:
        """(B, n_windows) -> (B, n_patches): n_p / sum over covering windows of 1/s."""
        # A score of 0 (a query equal to a memory vector) must give a harmonic mean
        # of 0, its limit; a floor keeps inf * 0 = nan out of the matrix product.
        return self.coverage[scale] / ((1.0 / np.maximum(window_scores, SCORE_FLOOR)) @ self.incidence[scale])

    @staticmethod
    def association(queries: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """(1 - max cosine to the memory) / 2, per query vector."""
        # rounding can put the cosine of a vector with itself a hair above 1
        return (1.0 - np.minimum((l2_normalize(queries) @ memory.T).max(axis=-1), 1.0)) / 2.0

    def memory_from_outputs(self, outputs: dict[str, np.ndarray]) -> ReferenceMemory:
        def pooled(name: str) -> np.ndarray:  # (K, N, D) -> (K * N, D) unit vectors
            x = l2_normalize(outputs[name])
            return x.reshape(-1, x.shape[-1])

        windows = {k: pooled(window_output_name(k)) for k in self.scales}
        return ReferenceMemory(windows=windows, patches=pooled(PATCH_FEATURES), shots=outputs[IMAGE_EMBEDDING].shape[0])

    def __call__(self, outputs: dict[str, np.ndarray], memory: ReferenceMemory | None = None) -> Scores:
        batch = outputs[IMAGE_EMBEDDING].shape[0]
        shape = (batch, *self.grid)
        s_img = self.probability(outputs[IMAGE_EMBEDDING])
        inv_sum = 1.0 / s_img[:, None]
        for k in self.scales:
            m_k = self.harmonic(self.probability(outputs[window_output_name(k)]), k)
            inv_sum = inv_sum + 1.0 / m_k
        with np.errstate(divide="ignore"):
            zero_map = (1 + len(self.scales)) / inv_sum
        if memory is None:
            return Scores(s_img, zero_map.reshape(shape), s_img, zero_map.reshape(shape), None)
        parts = [self.association(outputs[PATCH_FEATURES], memory.patches)]
        for k in self.scales:
            a_k = self.association(outputs[window_output_name(k)], memory.windows[k])
            parts.append(self.harmonic(a_k, k))
        few_map = np.mean(parts, axis=0)
        fused = (zero_map + few_map) / 2.0
        score = (s_img + few_map.max(axis=1)) / 2.0
        return Scores(score, fused.reshape(shape), s_img, zero_map.reshape(shape), few_map.reshape(shape))
