"""Preprocessing: pixel formats, and the resize against torch's antialiased bicubic."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import elpv_images, textile_images
from winclip.export.torch_winclip import read_rgb
from winclip.runtime.contract import Preprocess
from winclip.runtime.defaults import CLIP_MEAN, CLIP_STD
from winclip.runtime.postprocess import upsample_map
from winclip.runtime.preprocess import Preprocessor, resample_matrix, resample_taps, resize_frame

SPEC = Preprocess(input_size=(240, 240), mean=CLIP_MEAN, std=CLIP_STD)


def torch_resize(rgb: np.ndarray, size, dtype=torch.float64) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(dtype).permute(2, 0, 1)[None]
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)[0].float().numpy()


def _mosaic(paths, rows, cols):
    tiles = [read_rgb(p) for p in paths[: rows * cols]]
    return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


@pytest.mark.parametrize("shape", [(1500, 1100), (700, 900), (300, 300), (250, 250), (97, 131), (240, 240),
                                   (1, 3000), (2500, 3)])
def test_resize_matches_torch_antialiased_bicubic(shape):
    rng = np.random.default_rng(0)
    rgb = rng.random((*shape, 3), dtype=np.float32)
    got = resize_frame(rgb, (240, 240), "rgb")
    assert np.abs(got - torch_resize(rgb, (240, 240))).max() < 2e-6
    # torch's float32 kernel rounds its own tap positions: up to ~2.5e-5 away from both
    assert np.abs(got - torch_resize(rgb, (240, 240), torch.float32)).max() < 5e-5


def test_banded_and_dense_resampling_agree(monkeypatch):
    """Large inputs take the banded path (memory ~ taps, not in x out); it is the same filter."""
    from winclip.runtime import preprocess

    rgb = np.random.default_rng(4).random((900, 1300, 3), dtype=np.float32)
    dense = resize_frame(rgb, (240, 240), "rgb")
    monkeypatch.setattr(preprocess, "DENSE_LIMIT", 0)
    banded = resize_frame(rgb, (240, 240), "rgb")
    assert np.abs(dense - banded).max() < 1e-6
    assert np.abs(banded - torch_resize(rgb, (240, 240))).max() < 2e-6


def test_resize_on_real_large_frames():
    """Real images tiled into MVTec-sized frames (1000x1250 and 750x750) squashed to 240."""
    for frame in (_mosaic(textile_images("local", 20), 4, 5), _mosaic(elpv_images(9), 3, 3)[:750, :750]):
        diff = np.abs(resize_frame(frame, (240, 240), "rgb") - torch_resize(frame, (240, 240)))
        assert diff.max() < 2e-6, diff.max()


def test_resample_taps_are_the_dense_matrix_and_bounded():
    """The banded taps place the dense weights; their count grows with the scale factor, not the input."""
    for n_in, n_out in ((1500, 240), (100, 240), (241, 240), (10**6, 240)):
        lo, w = resample_taps(n_in, n_out)
        assert w.shape[0] == n_out and w.shape[1] <= 4 * max(n_in / n_out, 1) + 3
        if n_in < 10**5:
            dense = resample_matrix(n_in, n_out)
            for i in (0, n_out // 2, n_out - 1):
                row = np.zeros(n_in, np.float32)
                k = min(w.shape[1], n_in - lo[i])
                row[lo[i]:lo[i] + k] = w[i, :k]
                np.testing.assert_array_equal(dense[i], row)


def test_pixel_formats_give_the_same_image():
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    want = resize_frame(rgb8.astype(np.float32) / 255, (24, 24), "rgb")
    for frame, order in ((rgb8[:, :, ::-1], "bgr"), (rgb8, "rgb"),
                         (np.concatenate([rgb8[:, :, ::-1], np.full((50, 60, 1), 7, np.uint8)], axis=2), "bgr"),
                         (rgb8.astype(np.uint16)[:, :, ::-1] * 257, "bgr"), (rgb8.astype(np.float64) / 255, "rgb")):
        np.testing.assert_allclose(resize_frame(frame, (24, 24), order), want, atol=2e-6)
    gray = rgb8[:, :, 0]
    g = resize_frame(gray, (24, 24))
    assert g.shape == (3, 24, 24) and np.array_equal(g[0], g[2])
    np.testing.assert_array_equal(resize_frame(gray[:, :, None], (24, 24)), g)
    np.testing.assert_allclose(g[0], resize_frame(np.repeat(gray[:, :, None], 3, 2), (24, 24))[0], atol=1e-7)


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="shape"):
        resize_frame(np.zeros((4, 4, 2), np.uint8), (8, 8))
    with pytest.raises(ValueError, match="dtype"):
        resize_frame(np.zeros((4, 4, 3), np.int32), (8, 8))
    with pytest.raises(ValueError, match="empty"):
        resize_frame(np.zeros((0, 4, 3), np.uint8), (8, 8))
    bad = np.zeros((10, 10, 3), np.float32)
    bad[3, 3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        Preprocessor(SPEC)([bad])


def test_batch_is_normalised_with_the_manifest_constants():
    batch = Preprocessor(SPEC)([np.full((300, 200, 3), 255, np.uint8), np.zeros((10, 10), np.uint8)])
    assert batch.shape == (2, 3, 240, 240) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, :, 5, 5], (1 - np.array(SPEC.mean)) / np.array(SPEC.std), atol=1e-5)
    np.testing.assert_allclose(batch[1, :, 5, 5], -np.array(SPEC.mean) / np.array(SPEC.std), atol=1e-5)


@pytest.mark.parametrize("size", [(240, 240), (1000, 700), (37, 53)])
def test_map_upsampling_matches_torch_bilinear(size):
    grid = np.random.default_rng(2).random((15, 15)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(grid)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    assert np.abs(upsample_map(grid, *size) - want.numpy()).max() < 1e-5
