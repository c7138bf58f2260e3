"""winclip-eval's metrics against hand-made cases with known answers, and PRO against a plain, slow PRO."""

import numpy as np
import pytest
from scipy import ndimage

from winclip.calibration.evaluation.metrics import (METRICS, PixelSet, area_up_to, auroc, average_precision,
                                                    counts_at_threshold, f1_max, pixel_metrics, pro_curve, pro_score)


def slow_pro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """PRO the plain way: threshold by threshold, region by region (scipy's labelling, 8-connected)."""
    regions = []
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labels == r) for r in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        hit = maps >= t
        points.append(((hit & normal).sum() / normal.sum(), np.mean([hit[i][r].mean() for i, r in regions])))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1, x1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0), max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def test_image_metrics_on_a_case_worked_by_hand():
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(labels, scores) == pytest.approx(0.75)  # 3 of the 4 (defect, good) pairs are ordered right
    # ranked: 0.8 (defect) 0.4 (good) 0.35 (defect): precision 1 at recall 1/2, 2/3 at recall 1
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.35)  # P 2/3, R 1
    counts = counts_at_threshold(labels, scores, 0.35)
    assert (counts["true_positives"], counts["false_positives"], counts["false_negatives"],
            counts["true_negatives"]) == (2, 1, 0, 1)
    assert counts["precision"] == pytest.approx(2 / 3) and counts["recall"] == 1.0
    assert counts["false_alarm_rate"] == 0.5
    assert counts_at_threshold(labels, scores, 0.9)["precision"] is None  # nothing flagged: undefined, not 0


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_the_six_metrics_on_a_case_with_ties_worked_by_hand(dtype):
    """Every row of METRICS against numbers worked out on paper, on scores that tie across the labels: a tie
    counts half a pair for AUROC, and a threshold admits all of its tied scores at once."""
    assert set(METRICS) == {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_pro", "pixel_f1_max"}
    # images: defects 0.9, 0.6, 0.3; good parts 0.6, 0.3, 0.1, 0.1
    labels = np.array([1, 1, 0, 1, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.6, 0.3, 0.3, 0.1, 0.1], dtype=dtype)
    image = {m.name: m.compute(labels, scores) for m in METRICS.values() if m.level == "image"}
    # of the 12 (defect, good) pairs: 0.9 beats all 4; 0.6 ties one and beats 3; 0.3 ties one and beats 2
    assert image["image_auroc"] == pytest.approx((4 + 3.5 + 2.5) / 12)
    # thresholds 0.9, 0.6, 0.3: (precision, recall) = (1, 1/3), (2/3, 2/3), (3/5, 1); AP = sum of P x recall step
    assert image["image_ap"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    # F1 at those thresholds: 1/2, 2/3, 3/4 (and 3/5 at 0.1, where everything is flagged)
    assert image["image_f1_max"] == pytest.approx(0.75)
    # pixels, one row of 8: region A = pixels 0-1, region B = pixel 5, five defect-free pixels
    masks = np.array([[[1, 1, 0, 0, 0, 1, 0, 0]]], dtype=bool)
    maps = np.array([[[0.8, 0.4, 0.4, 0.2, 0.8, 0.4, 0.2, 0.2]]], dtype=dtype)
    pixels = PixelSet(masks, maps)
    pixel = {m.name: m.compute(pixels) for m in METRICS.values() if m.level == "pixel"}
    # 15 (defect, normal) pairs: 0.8 ties one and beats 4 -> 4.5; each 0.4 ties one, loses one, beats 3 -> 3.5
    assert pixel["pixel_auroc"] == pytest.approx((4.5 + 3.5 + 3.5) / 15)
    # thresholds 0.8, 0.4, 0.2: (P, R) = (1/2, 1/3), (3/5, 1), (3/8, 1): F1 0.4, 0.75, 6/11
    assert pixel["pixel_f1_max"] == pytest.approx(0.75)
    # PRO curve (FPR, mean region overlap): (0, 0) -> (1/5, (1/2 + 0) / 2) -> (2/5, 1) -> (1, 1); the tied 0.8s
    # come in together. Area to 0.3: 0.2 x 0.25 / 2 + 0.1 x (0.25 + 0.625) / 2 = 0.06875; / 0.3 = 11/48
    assert pixel["pixel_pro"] == pytest.approx(11 / 48)


def _image_with_regions():
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 2:7, 2:6] = True  # region A: 20 pixels
    masks[0, 15:20, 15] = True  # region B: 5 pixels
    return masks


def test_pro_counts_regions_not_pixels():
    masks = _image_with_regions()
    maps = np.full(masks.shape, 0.5)
    maps[0, 2:7, 2:6] = 0.9  # A found before any normal pixel, B only after all of them
    maps[0, 15:20, 15] = 0.1
    # curve (0, 0) -> (0, 1/2) -> (1, 1/2) -> (1, 1): PRO 1/2, although 20 of the 25 defect pixels are found
    assert pro_score(masks, maps) == pytest.approx(0.5)
    assert slow_pro(masks, maps) == pytest.approx(0.5)


def test_pro_known_answers():
    masks = _image_with_regions()
    assert pro_score(masks, masks.astype(float)) == pytest.approx(1.0)
    # one threshold: (0, 0) -> (1, 1); area to 0.3 is 0.045, normalised 0.15
    assert pro_score(masks, np.full(masks.shape, 0.7)) == pytest.approx(0.15)
    # a fifth of the normal pixels above every defect: (0.2, 0) then (0.2, 1): area 0.1 of 0.3
    maps = np.full(masks.shape, 0.2)
    normal = np.flatnonzero(~masks.ravel())
    maps.ravel()[normal[:len(normal) // 5]] = 0.8
    maps[masks] = 0.5
    assert len(normal) % 5 == 0
    assert pro_score(masks, maps) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(4))
def test_pro_equals_the_slow_implementation(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 24, 24), bool)
    for image in masks[:2]:  # the third image is defect-free
        for _ in range(3):
            y, x, h, w = *rng.integers(0, 18, 2), *rng.integers(1, 6, 2)
            image[y:y + h, x:x + w] = True
    # coarse values force ties across regions and normal pixels; the signal makes the curve non-trivial
    maps = (np.round(rng.random(masks.shape) * 20) / 20 + 0.3 * masks).astype(np.float16)
    assert pro_score(masks, maps) == pytest.approx(slow_pro(masks, maps.astype(np.float64)), abs=1e-12)
    fpr, pro = pro_curve(masks, maps)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == pytest.approx(1) and pro[-1] == pytest.approx(1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)


def test_area_up_to_interpolates_at_the_limit():
    # y = x from (0, 0) to (1, 1) with no point at 0.3: area 0.045
    assert area_up_to(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.3) == pytest.approx(0.045)
    assert area_up_to(np.array([0.0, 0.3, 1.0]), np.array([1.0, 1.0, 1.0]), 0.3) == pytest.approx(0.3)


def test_pro_refuses_sets_it_cannot_measure():
    with pytest.raises(ValueError, match="at least one defect region"):
        pro_score(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        pro_score(np.ones((1, 4, 4), bool), np.zeros((1, 4, 5)))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_pixel_metrics_from_the_tally_equal_scikit_learn_on_every_pixel(dtype):
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    rng = np.random.default_rng(7)
    masks = rng.random((4, 16, 16)) < 0.1
    maps = (rng.random(masks.shape) * 0.6 + 0.4 * masks).astype(dtype)
    maps[0, 0, :4] = [-0.0, 0.0, -0.0, 0.0]  # one value, however its sign bit is set
    metrics, _ = pixel_metrics(masks, maps)
    flat_masks, flat_maps = masks.ravel(), maps.ravel().astype(np.float64)
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-12)
    p, r, _ = precision_recall_curve(flat_masks, flat_maps)
    assert metrics["pixel_f1_max"] == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-300)), abs=1e-12)
    assert metrics["pixel_pro"] == pytest.approx(slow_pro(masks, flat_maps.reshape(masks.shape)), abs=1e-12)
