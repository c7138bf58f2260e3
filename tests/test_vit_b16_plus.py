"""End to end on the real ViT-B-16+ architecture (open_clip ViT-B-16-plus-240), random
weights from a checkpoint file: export through the CLI, verify, and hold the runtime to
the torch reference on real images, zero-shot and WinCLIP+ with K = 1 and 4.

Slow (a few minutes on a 2-core CPU): the bundle is exported once per session.
"""

import json

import cv2
import numpy as np
import pytest

from conftest import VIT, elpv_images, open_clip_prototypes, read, textile_images
from winclip.export.torch_winclip import TorchWinClip, read_rgb
from winclip.runtime import Detector

pytestmark = pytest.mark.slow
TOL = 1e-4


def test_export_writes_a_verified_bundle(vit_bundle, vit_checkpoint):
    m = json.loads((vit_bundle / "manifest.json").read_text())
    assert m["backbone"] == {"name": "ViT-B-16+", "open_clip_model": "ViT-B-16-plus-240",
                             "weights": m["backbone"]["weights"]}
    assert m["backbone"]["weights"]["kind"] == "file" and m["backbone"]["weights"]["file"] == vit_checkpoint.name
    assert m["grid"] == [15, 15] and m["preprocess"]["input_size"] == [240, 240]
    assert m["windows"]["counts"] == {"2": 196, "3": 169}
    assert m["dims"] == {"embed": 640, "width": 896, "layers": 12, "mlp": 3584}
    assert m["io"]["outputs"] == {"image_embedding": ["batch", 640], "window_embeddings_2": ["batch", 196, 640],
                                  "window_embeddings_3": ["batch", 169, 640], "patch_features": ["batch", 225, 896]}
    (engine,) = m["engines"]
    assert engine["precision"] == "fp32" and max(engine["verification"]["max_abs_diff"].values()) <= 1e-4
    assert set(m["text"]["objects"]) == {"bottle", "solar cell"}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Real images as files at their own sizes (250, 300) and tiled into larger frames."""
    folder = tmp_path_factory.mktemp("vit-frames")
    textile = textile_images("local", 4)
    cells = elpv_images(4, start=100)
    t = [read(p) for p in textile]
    big = np.concatenate([np.concatenate(t[:2], axis=1), np.concatenate(t[2:], axis=1)], axis=0)
    tall = np.concatenate([read(p) for p in cells[:3]], axis=0)  # 900 x 300, grayscale
    cv2.imwrite(str(folder / "big.png"), big)
    cv2.imwrite(str(folder / "tall.png"), tall)
    return [textile[0], cells[3], folder / "big.png", folder / "tall.png"]


def test_runtime_equals_torch_reference(vit_bundle, vit_model, frames):
    det = Detector.from_bundle(vit_bundle, object="solar_cell", provider="cpu")
    ref = TorchWinClip(vit_model, open_clip_prototypes(vit_model, VIT, "solar cell"))
    images = [read(p) for p in frames]
    rgb = [read_rgb(p) for p in frames]
    normals = textile_images("nominal", 2) + elpv_images(2, start=200)
    outputs, _ = det.embed(images)
    ref_feats = ref.features(ref.preprocess(rgb))
    np.testing.assert_allclose(outputs["image_embedding"], ref_feats["image"].numpy(), atol=TOL)
    np.testing.assert_allclose(outputs["patch_features"], ref_feats["patches"].numpy(), atol=TOL)
    np.testing.assert_allclose(outputs["window_embeddings_2"], ref_feats["windows"][2].numpy(), atol=TOL)
    np.testing.assert_allclose(outputs["window_embeddings_3"], ref_feats["windows"][3].numpy(), atol=TOL)
    report = {}
    for shots in (0, 1, 4):
        if shots:
            det.build_memory([read(p) for p in normals[:shots]])
            ref.set_normal_images([read_rgb(p) for p in normals[:shots]])
        got = det(images)
        want = ref(rgb)
        assert len(got) == len(want) == len(frames)
        for g, (_, m), image in zip(got, want, images):
            assert g.anomaly_map.shape == m.shape == image.shape[:2]
        score_diff = max(abs(g.image_score - s) for g, (s, _) in zip(got, want))
        map_diff = max(float(np.abs(g.anomaly_map - m).max()) for g, (_, m) in zip(got, want))
        report[shots] = (score_diff, map_diff)
    print("max |runtime - torch| (score, map) by shots:", report)
    for shots, (score_diff, map_diff) in report.items():
        assert score_diff < TOL and map_diff < TOL, (shots, report)
