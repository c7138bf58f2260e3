"""Runtime (ONNX Runtime + numpy) against the plain torch WinCLIP, on the tiny model.

The two sides share only the model and the prompt lists: the runtime decodes
files with OpenCV and uses the bundle's text prototypes; the torch side decodes
with PIL and computes its prototypes with open_clip here. The same comparison on
the real ViT-B-16+ architecture is in test_vit_b16_plus.py.
"""

import cv2
import numpy as np
import pytest

from conftest import TINY, elpv_images, open_clip_prototypes, read, textile_images
from winclip.export.torch_winclip import TorchWinClip, read_rgb
from winclip.runtime import Detector
from winclip.runtime.detector import FrameError
from winclip.runtime.scoring import WinClipScorer

TOL = 1e-4


def compare(detector, reference, paths) -> float:
    """Largest |runtime - torch| over scores and maps; every frame must come back."""
    got = detector([read(p) for p in paths])
    want = reference([read_rgb(p) for p in paths])
    assert len(got) == len(want) == len(paths)
    worst = 0.0
    for g, (score, amap), path in zip(got, want, paths):
        assert g.anomaly_map.shape == amap.shape == read(path).shape[:2]
        worst = max(worst, abs(g.image_score - score), float(np.abs(g.anomaly_map - amap).max()))
    return worst


@pytest.fixture(scope="module")
def pair(tiny_bundle, tiny_model):
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)
    ref = TorchWinClip(tiny_model, open_clip_prototypes(tiny_model, TINY, "bottle"))
    return det, ref


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list:
    """Real images as files: colour JPEGs, 8-bit gray PNGs, a non-square mosaic and a 16-bit copy."""
    folder = tmp_path_factory.mktemp("frames")
    paths = textile_images("local", 2) + elpv_images(2)
    a, b = read(paths[0]), read(paths[1])
    cv2.imwrite(str(folder / "wide.png"), np.concatenate([a, b], axis=1))  # 250x500
    cv2.imwrite(str(folder / "cell16.png"), read(paths[2]).astype(np.uint16) * 257)
    return paths + [folder / "wide.png", folder / "cell16.png"]


def test_zero_and_few_shot_agree_on_real_images(pair, frames):
    det, ref = pair
    assert compare(det, ref, frames) < TOL
    normals = textile_images("nominal", 4)
    for k in (1, 4):
        det.build_memory([read(p) for p in normals[:k]])
        ref.set_normal_images([read_rgb(p) for p in normals[:k]])
        assert det.memory.shots == k
        assert compare(det, ref, frames) < TOL
    det.set_memory(None)


def test_a_normal_image_scored_against_its_own_memory_is_normal_there(pair):
    """In WinCLIP+, every window and patch of a memorised image finds itself: its few-shot map is 0."""
    det, ref = pair
    normal = read(textile_images("nominal", 1)[0])
    zero_shot = det.score([normal])[0]
    det.build_memory([normal])
    few = det.score([normal])[0]
    det.set_memory(None)
    # fused = (zero + few) / 2 with few == 0, so the map halves and the score is s_img / 2 + 0
    np.testing.assert_allclose(few.grid_map, zero_shot.grid_map / 2, atol=1e-6)
    s_img = det.scorer.probability(det.embed([normal])[0]["image_embedding"])
    np.testing.assert_allclose(few.image_score, s_img / 2, atol=1e-6)


def test_batch_equals_one_by_one(pair):
    det, _ = pair
    frames = [read(p) for p in elpv_images(3, start=10)]
    batched = det(frames)
    assert len(batched) == 3
    for frame, b in zip(frames, batched):
        single = det(frame)[0]
        assert abs(single.image_score - b.image_score) < 1e-6
        assert np.abs(single.anomaly_map - b.anomaly_map).max() < 1e-6
        assert set(b.timings_ms) == {"preprocess", "engine", "scoring", "upsample"}


def test_pixel_formats_score_alike(pair):
    """Gray, 16-bit, float, RGB order and BGRA give the 8-bit BGR result."""
    det, _ = pair
    bgr = read(textile_images("local", 1, start=5)[0])
    want = det(bgr)[0]
    variants = {
        "rgb": (bgr[:, :, ::-1].copy(), "rgb"),
        "bgra": (np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 9, np.uint8)], axis=2), "bgr"),
        "16-bit": (bgr.astype(np.uint16) * 257, "bgr"),
        "float": (bgr.astype(np.float32) / 255.0, "bgr"),
    }
    for name, (frame, order) in variants.items():
        got = det(frame, color_order=order)[0]
        assert abs(got.image_score - want.image_score) < 1e-5, name
        assert np.abs(got.anomaly_map - want.anomaly_map).max() < 1e-5, name
    gray = read(elpv_images(1)[0])
    np.testing.assert_allclose(det(gray)[0].anomaly_map, det(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))[0].anomaly_map,
                               atol=1e-5)


def test_frames_that_cannot_be_scored_are_frame_errors(pair):
    det, _ = pair
    bad = np.full((40, 40, 3), np.nan, np.float32)
    with pytest.raises(FrameError, match="NaN"):
        det(bad)
    with pytest.raises(FrameError, match="shape"):
        det(np.zeros((4, 4, 2), np.uint8))


def test_threshold_gives_decisions(tiny_bundle):
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)
    frame = read(elpv_images(1)[0])
    first = det(frame)[0]
    assert first.anomalous is None
    det.threshold = first.image_score  # at the threshold: anomalous
    assert det(frame)[0].anomalous is True
    det.threshold = first.image_score + 1e-6
    assert det(frame)[0].anomalous is False


def test_temperature_override_gives_the_softmax_at_that_temperature(tiny_bundle):
    frame = read(elpv_images(1)[0])
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False, temperature=0.01)
    emb = det.embed([frame])[0]["image_embedding"][0].astype(np.float64)
    text = det.bundle.text_prototypes("bottle").astype(np.float64)
    cos = text @ emb / np.linalg.norm(text, axis=1) / np.linalg.norm(emb)
    logits = cos / 0.01
    want = np.exp(logits[1]) / np.exp(logits).sum()
    # zero-shot image score is s(f) at the overridden temperature
    assert det.score([frame])[0].image_score[0] == pytest.approx(want, abs=1e-9)
    default = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)
    assert default.scorer.temperature == 0.07


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
    from winclip.runtime.memory import FewShotMemory, MemoryKey

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
    key = MemoryKey("0" * 64, "fp32", "x", (2,), 1, 1, False)
    memory = FewShotMemory.from_outputs({"image_embedding": img, "window_embeddings_2": np.array([[[1.0, 0.0]]]),
                                         "patch_features": np.array([[[1.0, 0.0]]])}, key)
    fused = scorer(outputs, memory)
    a_win = (1 - 0.0) / 2  # window (0, 1) vs memory (1, 0): cos 0
    a_patch = np.array([0.0, 0.5, (1 - np.sqrt(0.5)) / 2, (1 - np.sqrt(0.5)) / 2])
    few = (a_patch + a_win) / 2
    np.testing.assert_allclose(fused.grid_map.ravel(), (zero.grid_map.ravel() + few) / 2, atol=1e-7)
    np.testing.assert_allclose(fused.image_score, [(s_img + few.max()) / 2], atol=1e-7)
