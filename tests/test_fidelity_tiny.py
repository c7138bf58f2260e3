"""Runtime (ONNX Runtime + numpy) against the plain torch reference, on the tiny model.

The same comparison on the real ViT-B-16+ architecture is in test_vit_b16_plus.py.
"""

import numpy as np
import pytest

from conftest import elpv_images, read, textile_images
from winclip.export.reference import TorchWinClip
from winclip.runtime import Detector
from winclip.runtime.preprocess import to_rgb_float
from winclip.runtime.scoring import WinClipScorer

TOL = 1e-4


def compare(detector, reference, frames):
    got = detector(frames)
    want = reference([to_rgb_float(f) for f in frames])
    worst = 0.0
    for g, (score, amap) in zip(got, want):
        assert g.anomaly_map.shape == amap.shape == np.shape(g.anomaly_map)
        worst = max(worst, abs(g.image_score - score), float(np.abs(g.anomaly_map - amap).max()))
    return worst


@pytest.fixture(scope="module")
def pair(tiny_bundle, tiny_model):
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)
    ref = TorchWinClip(tiny_model, det.bundle.text_prototypes("bottle"))
    return det, ref


def test_zero_and_few_shot_agree_on_real_images(pair):
    det, ref = pair
    frames = [read(p) for p in textile_images("local", 2) + elpv_images(2)]
    frames.append(np.concatenate([frames[0], frames[1]], axis=1))  # 250x500, not square
    assert compare(det, ref, frames) < TOL
    normals = [read(p) for p in textile_images("nominal", 4)]
    for k in (1, 4):
        det.set_reference(normals[:k])
        ref.set_reference([to_rgb_float(f) for f in normals[:k]])
        assert det.memory.shots == k
        assert compare(det, ref, frames) < TOL
    det.clear_reference()


def test_a_reference_image_scored_against_itself_stays_finite(pair):
    det, _ = pair
    normal = read(textile_images("nominal", 1)[0])
    det.set_reference([normal])
    result = det(normal)[0]
    det.clear_reference()
    assert np.isfinite(result.image_score) and np.isfinite(result.anomaly_map).all()


def test_batch_equals_one_by_one(pair):
    det, _ = pair
    frames = [read(p) for p in elpv_images(3, start=10)]
    batched = det(frames)
    for frame, b in zip(frames, batched):
        single = det(frame)[0]
        assert abs(single.image_score - b.image_score) < 1e-6
        assert np.abs(single.anomaly_map - b.anomaly_map).max() < 1e-6
        assert set(b.timings_ms) == {"preprocess", "engine", "scoring", "upsample"}


def test_threshold_gives_decisions(tiny_bundle):
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)
    frame = read(elpv_images(1)[0])
    first = det(frame)[0]
    assert first.anomalous is None
    det.threshold = first.image_score  # at the threshold: anomalous
    assert det(frame)[0].anomalous is True
    det.threshold = first.image_score + 1e-6
    assert det(frame)[0].anomalous is False


def test_temperature_override_changes_scores(tiny_bundle):
    frame = read(elpv_images(1)[0])
    a = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)(frame)[0].image_score
    b = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False, temperature=0.01)(frame)[0].image_score
    assert abs(a - b) > 1e-4


def test_scorer_probability_is_the_two_way_softmax():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, 8))
    scorer = WinClipScorer((3, 3), [2], 1, text, 0.07)
    e = rng.standard_normal((4, 8))
    tn, ta = text / np.linalg.norm(text, axis=1, keepdims=True)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    logits = np.stack([en @ tn, en @ ta], axis=1) / 0.07
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(scorer.probability(e), soft[:, 1], atol=1e-12)


def test_harmonic_aggregation_by_hand():
    scorer = WinClipScorer((3, 3), [2], 1, np.eye(2, 4), 0.07)
    s = np.array([[0.5, 0.25, 0.2, 0.1]])
    got = scorer.harmonic(s, 2)[0]
    assert got[0] == pytest.approx(0.5)  # corner: one window
    assert got[1] == pytest.approx(2 / (2 + 4))  # top middle: windows 0 and 1
    assert got[4] == pytest.approx(4 / (2 + 4 + 5 + 10))  # centre: all four


def test_fusion_formulas_by_hand():
    """M_0, M_few, the fused map and score on a 2x2 grid with one scale-2 window."""
    text = np.array([[1.0, 0.0], [0.0, 1.0]])  # normal = e1, anomalous = e2
    scorer = WinClipScorer((2, 2), [2], 1, text, 1.0)
    p = lambda cn, ca: 1 / (1 + np.exp(cn - ca))  # softmax([cn, ca])[1]
    img = np.array([[1.0, 0.0]])  # cos to normal 1, to anomalous 0
    win = np.array([[[0.0, 1.0]]])  # one window covering all four patches
    patches = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]])
    outputs = {"image_embedding": img, "window_embeddings_2": win, "patch_features": patches}
    s_img, s_win = p(1, 0), p(0, 1)
    zero = scorer(outputs)
    np.testing.assert_allclose(zero.grid_map, np.full((1, 2, 2), 2 / (1 / s_img + 1 / s_win)))
    memory = scorer.memory_from_outputs({"image_embedding": img, "window_embeddings_2": np.array([[[1.0, 0.0]]]),
                                         "patch_features": np.array([[[1.0, 0.0]]])})
    fused = scorer(outputs, memory)
    a_win = (1 - 0.0) / 2  # window (0, 1) vs memory (1, 0): cos 0
    a_patch = np.array([0.0, 0.5, (1 - np.sqrt(0.5)) / 2, (1 - np.sqrt(0.5)) / 2])
    few = (a_patch + a_win) / 2
    np.testing.assert_allclose(fused.few_shot_map.ravel(), few)
    np.testing.assert_allclose(fused.grid_map.ravel(), (zero.grid_map.ravel() + few) / 2)
    np.testing.assert_allclose(fused.image_score, [(s_img + few.max()) / 2])
