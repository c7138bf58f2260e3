"""WinCLIP / WinCLIP+ scoring in vectorised numpy (no loop over patches or windows).

Inputs are the graph's raw outputs; the math follows docs/algorithm.md:
zero-shot probabilities with a temperature, harmonic aggregation of window
scores onto patches through a fixed incidence matrix, harmonic fusion of
scales, and the WinCLIP+ nearest-memory association. Probabilities and fusion
are computed in float64; the nearest-memory cosines, the one large product, in
float32 (their rounding, ~1e-7, is far inside the 1e-4 agreement with torch).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from winclip.runtime.contract import IMAGE_EMBEDDING, PATCH_FEATURES, window_output_name
from winclip.runtime.defaults import check_temperature
from winclip.runtime.geometry import incidence_matrix
from winclip.runtime.memory import FewShotMemory, unit_rows

SCORE_FLOOR = 1e-12  # harmonic means treat scores below this as this


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class Scores:
    """Scores of a batch at the patch grid: what the scorer returns before maps are upsampled."""

    image_score: np.ndarray  # (B,) float64
    grid_map: np.ndarray  # (B, gh, gw) float64: fused map (zero-shot alone without memory)


class WinClipScorer:
    """Scores for a batch of graph outputs, zero-shot or against a few-shot memory."""

    def __init__(self, grid: tuple[int, int], scales, stride: int, text_prototypes: np.ndarray, temperature: float):
        self.grid = tuple(grid)
        self.scales = list(scales)
        self.text = l2_normalize(text_prototypes)  # (2, D): normal, anomalous
        self.temperature = check_temperature(temperature)
        self.incidence = {k: incidence_matrix(grid, k, stride) for k in self.scales}
        self.coverage = {k: inc.sum(axis=0) for k, inc in self.incidence.items()}

    def with_text(self, text_prototypes: np.ndarray) -> "WinClipScorer":
        """The same geometry and temperature with another object's text prototypes."""
        twin = copy.copy(self)
        twin.text = l2_normalize(text_prototypes)
        return twin

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
        """(1 - max cosine to the memory) / 2, per query vector; memory rows are unit vectors."""
        best = (unit_rows(queries) @ memory.T).max(axis=-1).astype(np.float64)
        # rounding can put the cosine of a vector with itself a hair above 1
        return (1.0 - np.minimum(best, 1.0)) / 2.0

    def __call__(self, outputs: dict[str, np.ndarray], memory: FewShotMemory | None = None) -> Scores:
        batch = outputs[IMAGE_EMBEDDING].shape[0]
        shape = (batch, *self.grid)
        s_img = self.probability(outputs[IMAGE_EMBEDDING])
        inv_sum = 1.0 / np.maximum(s_img[:, None], SCORE_FLOOR)
        for k in self.scales:
            m_k = self.harmonic(self.probability(outputs[window_output_name(k)]), k)
            inv_sum = inv_sum + 1.0 / np.maximum(m_k, SCORE_FLOOR)
        zero_map = (1 + len(self.scales)) / inv_sum
        if memory is None:
            return Scores(s_img, zero_map.reshape(shape))
        parts = [self.association(outputs[PATCH_FEATURES], memory.patches)]
        for k in self.scales:
            parts.append(self.harmonic(self.association(outputs[window_output_name(k)], memory.windows[k]), k))
        few_map = np.mean(parts, axis=0)
        fused = (zero_map + few_map) / 2.0
        score = (s_img + few_map.max(axis=1)) / 2.0
        return Scores(score, fused.reshape(shape))
