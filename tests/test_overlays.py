"""Overlays people read at a glance: heat-map colours that mean something relative to the thresholds, whatever
band a model's scores sit in, and a score/verdict label readable on any heat map and placed clear of the regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from conftest import read, textile_images
from winclip.runtime.postprocess import Region, annotate, heatmap_overlay, render_overlay


@dataclass
class Scored:
    """What render_overlay reads of a FrameResult."""

    anomaly_map: np.ndarray
    image_score: float
    anomalous: bool | None
    regions: list | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None


def narrow_band_map(size: int = 200) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Scores in a narrow band (0.500..0.520, as a model with a flat softmax gives) with a hot square."""
    rng = np.random.default_rng(0)
    amap = (0.500 + 0.006 * rng.random((size, size))).astype(np.float32)
    x, y, w, h = 120, 110, 50, 40
    amap[y:y + h, x:x + w] = 0.514 + 0.006 * rng.random((h, w))
    return amap, (x, y, w, h)


def mean_bgr(image: np.ndarray, box, inside: bool = True) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(image.shape[:2], bool)
    mask[y:y + h, x:x + w] = True
    return image[mask if inside else ~mask].reshape(-1, 3).mean(axis=0)


def test_colours_are_relative_to_the_pixel_threshold_in_a_narrow_band():
    """Before: a fixed 0..1 scale painted the whole 0.50..0.52 map one green tint; now what is at or above the
    pixel threshold is red and what is below is blue to green, whatever band the scores sit in."""
    amap, box = narrow_band_map()
    frame = np.full((200, 200, 3), 128, np.uint8)
    picture = render_overlay(frame, Scored(amap, 0.52, True, None, threshold=0.51, pixel_threshold=0.512))
    hot, cold = mean_bgr(picture, box), mean_bgr(picture, box, inside=False)
    assert hot[2] > hot[0] + 60 and hot[2] > hot[1], hot  # red where the map passes the pixel threshold
    assert cold[2] < max(cold[0], cold[1]), cold  # not red elsewhere
    assert np.abs(hot - cold).sum() > 150, (hot, cold)  # one look tells them apart


def test_a_good_frame_shows_no_red_and_no_threshold_keeps_the_fixed_scale():
    amap, box = narrow_band_map()
    frame = np.full((200, 200, 3), 128, np.uint8)
    good = render_overlay(frame, Scored(amap, 0.40, False, None, threshold=0.6, pixel_threshold=0.6))
    heat = good.reshape(-1, 3).astype(int)
    assert not ((heat[:, 2] > 180) & (heat[:, 1] < 120)).any()  # nothing below the threshold is painted red
    # without thresholds the map keeps its fixed 0..1 scale (comparable between frames)
    fixed = heatmap_overlay(frame, amap)
    unscaled = render_overlay(frame, Scored(amap, 0.52, None))
    assert np.array_equal(fixed[:150, :100], unscaled[:150, :100]) or np.abs(
        fixed.astype(int) - unscaled.astype(int)).mean() < 8


def label_pixels(image: np.ndarray, regions, score, anomalous, **kwargs) -> np.ndarray:
    """Where the score/verdict label changed the picture (annotated with and without it)."""
    bare = annotate(image.copy(), regions, None, anomalous)
    labelled = annotate(image.copy(), regions, score, anomalous, **kwargs)
    return np.abs(labelled.astype(int) - bare.astype(int)).sum(axis=2) > 0


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left"])
def test_the_label_stays_clear_of_the_regions_on_a_small_crop(corner):
    """Before: the label sat at the top left whatever was there, and ran into a region box on 200 px crops."""
    image = read(textile_images("nominal", 1)[0])[:200, :200].copy()
    image = np.dstack([image] * 3) if image.ndim == 2 else image
    x = 4 if "left" in corner else 96
    y = 4 if "top" in corner else 150
    regions = [Region(x, y, 100, 46, 3000, 0.9)]
    changed = label_pixels(image, regions, 0.731, True)
    assert changed.any()
    r = regions[0]
    around = np.zeros(changed.shape, bool)
    around[max(0, r.y - 3):r.y + r.height + 3, max(0, r.x - 3):r.x + r.width + 3] = True
    assert not (changed & around).any(), f"the label covers the region at the {corner}"


def luminance(bgr: np.ndarray) -> np.ndarray:
    c = bgr[..., ::-1].astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


@pytest.mark.parametrize("value", [0.0, 0.35, 0.62, 1.0])  # dark blue, cyan-green, yellow, dark red heat
@pytest.mark.parametrize("anomalous", [True, False])
def test_the_label_is_readable_on_any_heat_map(value, anomalous):
    frame = np.full((200, 200, 3), 200, np.uint8)
    picture = heatmap_overlay(frame, np.full((200, 200), value, np.float32))
    changed = label_pixels(picture, None, 0.731, anomalous)
    ys, xs = np.nonzero(changed)
    box = picture[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    labelled = annotate(picture.copy(), None, 0.731, anomalous)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    lum = luminance(labelled)
    bright, dark = np.percentile(lum, 97), np.percentile(lum, 20)
    assert (bright + 0.05) / (dark + 0.05) >= 4.5, (value, anomalous)  # WCAG AA for text
    assert box.shape[0] >= 14  # a label a person can read on a 200 px crop, not 8 px glyphs
