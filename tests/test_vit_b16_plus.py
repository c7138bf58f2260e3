"""End to end on the real ViT-B-16+ architecture (open_clip ViT-B-16-plus-240), random
weights from a checkpoint file: export through the CLI, verify, and hold the runtime to
the torch reference on real images, zero-shot and WinCLIP+ with K = 1 and 4.

Slow (a few minutes on a 2-core CPU): the bundle is exported once per session.
"""

import json

import numpy as np
import pytest

from conftest import elpv_images, read, textile_images
from winclip.export.reference import TorchWinClip
from winclip.runtime import Detector
from winclip.runtime.preprocess import to_rgb_float

pytestmark = pytest.mark.slow
TOL = 1e-4


def test_export_writes_a_verified_bundle(vit_bundle, vit_checkpoint):
    m = json.loads((vit_bundle / "manifest.json").read_text())
    assert m["backbone"] == {"name": "ViT-B-16+", "open_clip_model": "ViT-B-16-plus-240",
                             "weights": m["backbone"]["weights"]}
    assert m["backbone"]["weights"]["kind"] == "file" and m["backbone"]["weights"]["file"] == vit_checkpoint.name
    assert m["grid"] == [15, 15] and m["preprocess"]["input_size"] == [240, 240]
    assert m["windows"]["counts"] == {"2": 196, "3": 169}
    assert m["dims"] == {"embed": 640, "width": 896, "layers": 12}
    assert m["graph"]["outputs"] == {"image_embedding": ["batch", 640], "window_embeddings_2": ["batch", 196, 640],
                                     "window_embeddings_3": ["batch", 169, 640], "patch_features": ["batch", 225, 896]}
    assert max(m["verification"]["max_abs_diff"].values()) <= 1e-4
    assert set(m["text"]["objects"]) == {"bottle", "solar cell"}


@pytest.fixture(scope="module")
def frames():
    """Real images at their own sizes (250, 300) and tiled into larger frames."""
    textile = [read(p) for p in textile_images("local", 4)]
    cells = [read(p) for p in elpv_images(4, start=100)]
    big = np.concatenate([np.concatenate(textile[:2], axis=1), np.concatenate(textile[2:], axis=1)], axis=0)
    tall = np.concatenate(cells[:3], axis=0)  # 900 x 300, grayscale
    return [textile[0], cells[3], big, tall]


def test_runtime_equals_torch_reference(vit_bundle, vit_model, frames):
    det = Detector.from_bundle(vit_bundle, object="solar_cell", provider="cpu")
    ref = TorchWinClip(vit_model, det.bundle.text_prototypes("solar cell"))
    rgb = [to_rgb_float(f) for f in frames]
    normals = [read(p) for p in textile_images("nominal", 2)] + [read(p) for p in elpv_images(2, start=200)]
    outputs, _ = det.embed(frames)
    ref_feats = ref.features(ref.preprocess(rgb))
    np.testing.assert_allclose(outputs["image_embedding"], ref_feats["image"].numpy(), atol=TOL)
    np.testing.assert_allclose(outputs["patch_features"], ref_feats["patches"].numpy(), atol=TOL)
    np.testing.assert_allclose(outputs["window_embeddings_2"], ref_feats["windows"][2].numpy(), atol=TOL)
    np.testing.assert_allclose(outputs["window_embeddings_3"], ref_feats["windows"][3].numpy(), atol=TOL)
    report = {}
    for shots in (0, 1, 4):
        if shots:
            det.set_reference(normals[:shots])
            ref.set_reference([to_rgb_float(f) for f in normals[:shots]])
        got = det(frames)
        want = ref(rgb)
        score_diff = max(abs(g.image_score - s) for g, (s, _) in zip(got, want))
        map_diff = max(float(np.abs(g.anomaly_map - m).max()) for g, (_, m) in zip(got, want))
        for g, (_, m) in zip(got, want):
            assert g.anomaly_map.shape == m.shape
        report[shots] = (score_diff, map_diff)
    print("max |runtime - torch| (score, map) by shots:", report)
    for shots, (score_diff, map_diff) in report.items():
        assert score_diff < TOL and map_diff < TOL, (shots, report)
