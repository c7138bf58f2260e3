"""Preprocessing: pixel formats, and the resize against torch's antialiased bicubic."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import elpv_images, read, textile_images
from winclip.runtime.preprocess import Preprocessor, resample_matrix, to_rgb_float, upsample_map

SPEC = {"input_size": [240, 240], "resize": "squash", "interpolation": "bicubic", "antialias": True,
        "channel_order": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711]}


def torch_resize(rgb: np.ndarray, size, dtype=torch.float64) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(dtype).permute(2, 0, 1)[None]
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)[0].float().numpy()


def _mosaic(paths, rows, cols):
    tiles = [to_rgb_float(read(p)) for p in paths[: rows * cols]]
    return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


@pytest.mark.parametrize("shape", [(1500, 1100), (700, 900), (300, 300), (250, 250), (97, 131), (240, 240)])
def test_resize_matches_torch_antialiased_bicubic(shape):
    rng = np.random.default_rng(0)
    rgb = rng.random((*shape, 3), dtype=np.float32)
    got = Preprocessor(SPEC).resize(rgb)
    assert np.abs(got - torch_resize(rgb, (240, 240))).max() < 2e-6
    # torch's float32 kernel rounds its own tap positions: up to ~2.5e-5 away from both
    assert np.abs(got - torch_resize(rgb, (240, 240), torch.float32)).max() < 5e-5


def test_resize_on_real_large_frames():
    """Real images tiled into MVTec-sized frames (1000x1250 and 750x750) squashed to 240."""
    for frame in (_mosaic(textile_images("local", 20), 4, 5), _mosaic(elpv_images(9), 3, 3)[:750, :750]):
        diff = np.abs(Preprocessor(SPEC).resize(frame) - torch_resize(frame, (240, 240)))
        assert diff.max() < 2e-6, diff.max()


def test_resample_rows_are_partitions_of_unity():
    for n_in, n_out in ((1500, 240), (100, 240), (241, 240)):
        w = resample_matrix(n_in, n_out)
        assert w.shape == (n_out, n_in) and np.allclose(w.sum(1), 1, atol=1e-6)


def test_pixel_formats_give_the_same_image():
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    ref = rgb8.astype(np.float32) / 255
    np.testing.assert_allclose(to_rgb_float(rgb8[:, :, ::-1], "bgr"), ref, atol=1e-7)
    np.testing.assert_allclose(to_rgb_float(rgb8, "rgb"), ref, atol=1e-7)
    rgba = np.concatenate([rgb8[:, :, ::-1], np.full((50, 60, 1), 7, np.uint8)], axis=2)
    np.testing.assert_allclose(to_rgb_float(rgba, "bgr"), ref, atol=1e-7)
    np.testing.assert_allclose(to_rgb_float(rgb8.astype(np.uint16)[:, :, ::-1] * 257, "bgr"), ref, atol=1e-6)
    gray = rgb8[:, :, 0]
    g = to_rgb_float(gray)
    assert g.shape == (50, 60, 3) and np.allclose(g[..., 0], g[..., 2])
    assert np.allclose(to_rgb_float(gray[:, :, None]), g)


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="shape"):
        to_rgb_float(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        to_rgb_float(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="empty"):
        to_rgb_float(np.zeros((0, 4, 3), np.uint8))


def test_batch_is_normalised_with_the_manifest_constants():
    batch = Preprocessor(SPEC)([np.full((300, 200, 3), 255, np.uint8), np.zeros((10, 10), np.uint8)])
    assert batch.shape == (2, 3, 240, 240) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, :, 5, 5], (1 - np.array(SPEC["mean"])) / np.array(SPEC["std"]), atol=1e-5)
    np.testing.assert_allclose(batch[1, :, 5, 5], -np.array(SPEC["mean"]) / np.array(SPEC["std"]), atol=1e-5)


@pytest.mark.parametrize("size", [(240, 240), (1000, 700), (37, 53)])
def test_map_upsampling_matches_torch_bilinear(size):
    grid = np.random.default_rng(2).random((15, 15)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(grid)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    assert np.abs(upsample_map(grid, *size) - want.numpy()).max() < 1e-5
