"""Export on the tiny open_clip config: graph vs torch, text side, manifest, bad input."""

import hashlib
import json
import time

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import TINY, TINY_CONFIG, export, make_model, run_cli, save_checkpoint
from winclip.export.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES, prompt_sets
from winclip.export.text import text_prototypes
from winclip.export.windowed_visual import WindowedVisual
from winclip.runtime import contract as schema
from winclip.runtime.geometry import window_patch_indices


def test_prompt_ensemble_sizes():
    assert (len(NORMAL_STATES), len(ANOMALOUS_STATES), len(TEMPLATES)) == (7, 4, 22)
    assert len(set(TEMPLATES)) == 22 and all(t.endswith(".") for t in TEMPLATES)
    normal, anomalous = prompt_sets("metal nut")
    assert len(normal) == 154 and len(anomalous) == 88
    assert "a cropped photo of a flawless metal nut." in normal
    assert "a photo of the metal nut with damage for anomaly detection." in anomalous


def test_text_prototypes_are_normalised_means_of_normalised_prompts(tiny_model):
    import open_clip

    protos = text_prototypes(tiny_model, TINY, "bottle")
    tok = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        for row, prompts in zip(protos, prompt_sets("bottle")):
            e = tiny_model.encode_text(tok(prompts))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            np.testing.assert_allclose(row, (m / m.norm()).numpy(), atol=1e-6)
    raw = text_prototypes(tiny_model, TINY, "bottle", ensemble="raw_mean")
    assert not np.allclose(raw, protos) and np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-6)


def test_graph_outputs_match_torch_for_several_batch_sizes(tiny_bundle, tiny_model):
    wrapper = WindowedVisual(tiny_model.visual).eval()
    sess = ort.InferenceSession(str(tiny_bundle / "visual.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 80, 80)).astype(np.float32)
        with torch.no_grad():
            want = [t.numpy() for t in wrapper(torch.from_numpy(x))]
        got = sess.run(None, {"images": x})
        assert [o.name for o in sess.get_outputs()] == schema.output_names([2, 3])
        for w, g in zip(want, got):
            assert w.shape == g.shape and w.shape[0] == batch
            assert np.abs(w - g).max() <= 1e-4


def test_graph_image_embedding_is_open_clips_own(tiny_model):
    wrapper = WindowedVisual(tiny_model.visual).eval()
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        np.testing.assert_allclose(wrapper(x)[0].numpy(), tiny_model.encode_image(x).numpy(), atol=1e-5)


def test_windows_never_attend_across_each_other(tiny_model):
    """open_clip 3.x is batch-first; a sequence-first feed would mix windows silently."""
    wrapper = WindowedVisual(tiny_model.visual).eval()
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        base = wrapper(x)[1][0]  # scale-2 window embeddings of frame 0
        # change patch (row 4, col 4) only: windows not holding it must not move
        y = x.clone()
        y[:, :, 64:80, 64:80] += 3.0
        moved = wrapper(y)[1][0]
    holds = np.array([24 in w for w in window_patch_indices((5, 5), 2)])
    diff = (moved - base).abs().amax(dim=1).numpy()
    assert diff[~holds].max() < 1e-5
    assert diff[holds].min() > 1e-3
    # and a window alone, through open_clip's own blocks, gives what it gives in the batch
    with torch.no_grad():
        seq = tiny_model.visual.ln_pre(wrapper.embed_tokens(x)[:, [0, 1, 2, 6, 7]])
        alone = tiny_model.visual.transformer(seq)
        np.testing.assert_allclose(wrapper._project_class(alone)[0].numpy(), base[0].numpy(), atol=1e-5)


def test_manifest_records_the_contract(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    # every engine ONNX: written as version 2, which older runtimes still read (3 only once an IR is added)
    assert m["schema_version"] == 2 < schema.SCHEMA_VERSION and m["format"] == schema.BUNDLE_FORMAT
    assert m["backbone"]["open_clip_model"] == TINY and m["backbone"]["weights"]["kind"] == "file"
    assert len(m["backbone"]["weights"]["sha256"]) == 64
    assert m["grid"] == [5, 5] and m["windows"]["counts"] == {"2": 16, "3": 9}
    assert m["preprocess"]["input_size"] == [80, 80] and m["preprocess"]["resize"] == "squash"
    assert m["io"]["outputs"]["window_embeddings_3"] == ["batch", 9, 32]
    assert m["io"]["outputs"]["patch_features"] == ["batch", 25, 64]
    assert set(m["text"]["objects"]) == {"bottle", "metal nut"}
    assert m["text"]["templates"] == list(TEMPLATES)
    (engine,) = m["engines"]
    assert engine["file"] == "visual.onnx" and engine["precision"] == "fp32" and not engine["accepted_degraded"]
    assert engine["made_by"]["tool"] == "winclip-export" and engine["made_by"]["opset"] == 17
    assert engine["verification"]["inputs"] == 2 and max(engine["verification"]["max_abs_diff"].values()) <= 1e-4
    files = sorted(p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file())
    named = [engine["file"], *(o["file"] for o in m["text"]["objects"].values())]
    assert sorted(named) == [f for f in files if f != "manifest.json"]
    for name in named:
        digest = engine["sha256"] if name == engine["file"] else next(
            o["sha256"] for o in m["text"]["objects"].values() if o["file"] == name)
        assert hashlib.sha256((tiny_bundle / name).read_bytes()).hexdigest() == digest
    assert {"torch", "open_clip_torch", "onnxruntime"} <= set(m["versions"])
    assert np.load(tiny_bundle / m["text"]["objects"]["metal nut"]["file"]).shape == (2, 32)


def test_checkpoint_file_loads_bit_exact(tiny_model, tiny_checkpoint):
    from winclip.export.backbones import load_backbone

    loaded = load_backbone(TINY, str(tiny_checkpoint))
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_safetensors_checkpoint_loads(tiny_model, tmp_path):
    from safetensors.torch import save_file

    from winclip.export.backbones import load_backbone

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    loaded = load_backbone(TINY, str(path))
    assert torch.equal(loaded.model.visual.proj, tiny_model.visual.proj)


def test_verification_failure_leaves_nothing(tiny_checkpoint, tmp_path):
    from winclip.export.errors import ExportError

    out = tmp_path / "b"
    with pytest.raises(ExportError, match="verification failed"):
        export(out, tiny_checkpoint, TINY, tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_bundle_atomically(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    export(out, tiny_checkpoint, TINY)
    first = json.loads((out / "manifest.json").read_text())["created"]
    export(out, tiny_checkpoint, TINY, objects=("screw",), force=True)
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["text"]["objects"]) == ["screw"] and not (out / "text" / "bottle.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert m["created"] >= first


def test_a_failed_replacement_keeps_the_old_bundle(tiny_checkpoint, tmp_path):
    from winclip.export.errors import ExportError
    from winclip.runtime.bundle import Bundle

    out = tmp_path / "b"
    export(out, tiny_checkpoint, TINY)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ExportError, match="verification failed"):
        export(out, tiny_checkpoint, TINY, objects=("screw",), force=True, tolerance=0.0)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and Bundle.load(out).objects == ["bottle"]


def test_auto_exporter_falls_back_to_dynamo(tiny_checkpoint, tmp_path, monkeypatch):
    """When torch's TorchScript exporter is gone (or fails), auto writes the graph with dynamo at opset >= 18."""
    from winclip.export import exporter
    from winclip.export.errors import ExportError

    real = exporter.export_onnx

    def no_torchscript(wrapper, path, opset, name="auto"):
        if name == "torchscript":
            raise ExportError("ONNX export failed (torchscript): gone")
        return real(wrapper, path, opset, name)

    monkeypatch.setattr(exporter, "export_onnx", no_torchscript)
    out = export(tmp_path / "b", tiny_checkpoint, TINY)
    made_by = json.loads((out / "manifest.json").read_text())["engines"][0]["made_by"]
    assert made_by["exporter"] == "dynamo" and made_by["opset"] == 18


@pytest.mark.parametrize("kwargs", [{"patch_layer": 1, "patch_ln_post": True}, {"scales": (3,), "stride": 2}],
                         ids=["patch-layer-1-ln-post", "scale-3-stride-2"])
def test_non_default_geometry_and_patch_features_against_the_torch_reference(tiny_checkpoint, tiny_model, tmp_path,
                                                                              kwargs):
    from conftest import open_clip_prototypes, textile_images
    from winclip.export.torch_winclip import TorchWinClip, read_rgb
    from winclip.runtime import Detector

    from conftest import read

    out = export(tmp_path / "b", tiny_checkpoint, TINY, **kwargs)
    det = Detector.from_bundle(out, provider="cpu", cache=False)
    ref = TorchWinClip(tiny_model, open_clip_prototypes(tiny_model, TINY, "bottle"), **kwargs)
    frames = textile_images("local", 3)
    normals = textile_images("nominal", 2)
    det.build_memory([read(p) for p in normals])
    ref.set_normal_images([read_rgb(p) for p in normals])
    got, want = det([read(p) for p in frames]), ref([read_rgb(p) for p in frames])
    assert len(got) == len(want) == 3
    for g, (score, amap) in zip(got, want):
        assert abs(g.image_score - score) < 1e-4 and np.abs(g.anomaly_map - amap).max() < 1e-4


def test_force_never_replaces_a_folder_that_is_not_a_bundle(tiny_checkpoint, tmp_path):
    from winclip.export.errors import ExportError

    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a bundle"):
        export(data, tiny_checkpoint, TINY, force=True)
    assert (data / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs,match", [({"scales": (2, 2)}, "distinct"), ({"temperature": 0.0}, "temperature"),
                                          ({"opset": 9}, "opset")])
def test_bad_options_are_refused_before_loading(tmp_path, kwargs, match):
    from winclip.export.errors import ExportError
    from winclip.export.exporter import ExportOptions, check_inputs

    with pytest.raises(ExportError, match=match):
        check_inputs(ExportOptions(out=tmp_path / "b", **kwargs))


# ---- bad input: one line, non-zero exit, nothing written
def _cli_fails(tmp_path, *args, env=None):
    out = tmp_path / "out"
    proc = run_cli("winclip-export", "--model-config", str(TINY_CONFIG), "--out", str(out), *args, env=env)
    assert proc.returncode != 0, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    return error_lines[0]


def test_unknown_backbone_lists_valid_ones(tmp_path):
    msg = _cli_fails(tmp_path, "--backbone", "ViT-Z-99", "--pretrained", "none")
    assert "unknown backbone 'ViT-Z-99'" in msg and "ViT-B-16+" in msg and "ViT-L-14" in msg


def test_missing_checkpoint(tmp_path):
    msg = _cli_fails(tmp_path, "--backbone", TINY, "--pretrained", str(tmp_path / "nope.pt"))
    assert "checkpoint not found" in msg


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    msg = _cli_fails(tmp_path, "--backbone", TINY, "--pretrained", str(bad))
    assert "cannot read checkpoint" in msg


class Payload:
    """Pickled, it calls Path.touch(marker) when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(1), "hook": Payload(str(marker))}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: loading it unguarded runs it
    assert marker.exists()
    marker.unlink()
    msg = _cli_fails(tmp_path, "--backbone", TINY, "--pretrained", str(evil))
    assert "cannot read checkpoint" in msg and not marker.exists()


def test_checkpoint_for_another_architecture_names_the_mismatch(tmp_path):
    import open_clip

    open_clip.add_model_config(TINY_CONFIG)
    other = save_checkpoint(make_model(TINY), tmp_path / "tiny.pt")
    msg = _cli_fails(tmp_path, "--backbone", "ViT-B-16+", "--pretrained", str(other))
    assert "does not fit ViT-B-16-plus-240" in msg and "vision width/patch 64/16, model 896/16" in msg


def test_tag_download_offline_fails_fast(tmp_path, monkeypatch):
    """Whatever the network's state: offline by flag, or the hub unreachable, fails at once naming the file."""
    from winclip.export import backbones
    from winclip.export.errors import ExportError

    # Against this run's own start-up: the same command failing on a tag it does not know, before any download.
    # Fast means no slower than that by much; the hub client's retries add about 46 s of waiting to it.
    t0 = time.perf_counter()
    _cli_fails(tmp_path, "--backbone", "ViT-B-16+", "--pretrained", "laion9000")
    start_up = time.perf_counter() - t0
    t0 = time.perf_counter()
    msg = _cli_fails(tmp_path, "--backbone", "ViT-B-16+", "--pretrained", "laion400m_e31",
                     env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert time.perf_counter() - t0 < start_up + 20, start_up
    assert "needs a download" in msg and "--pretrained PATH" in msg and "laion400m_e31" in msg
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(backbones, "_reachable", lambda host, port=443, timeout=3.0: False)
    with pytest.raises(ExportError, match="needs a download .*huggingface.co is unreachable"):
        backbones._fetch_tag("ViT-B-16-plus-240", "laion400m_e31")


def test_unknown_tag_lists_known_tags(tmp_path):
    msg = _cli_fails(tmp_path, "--backbone", "ViT-B-16+", "--pretrained", "laion9000")
    assert "laion400m_e31" in msg


def test_empty_object_name(tmp_path):
    msg = _cli_fails(tmp_path, "--backbone", TINY, "--pretrained", "none", "--object", "  ")
    assert "empty" in msg


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    proc = run_cli("winclip-export", "--model-config", str(TINY_CONFIG), "--backbone", TINY,
                   "--pretrained", "none", "--out", str(tmp_path / "out"))
    assert proc.returncode != 0 and "--force" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_random_weights_are_seeded_marked_and_warned_about_by_every_command(tmp_path):
    """--pretrained none: one seed, one bundle; the manifest says so; a command that loads it says, once, on
    stderr, that its scores mean nothing."""
    def export_random(name, *seed):
        proc = run_cli("winclip-export", "--model-config", str(TINY_CONFIG), "--backbone", TINY, "--pretrained",
                       "none", *seed, "--object", "bottle", "--out", str(tmp_path / name), check=True)
        assert "RANDOM weights" in proc.stderr
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        return m["backbone"]["weights"], [e["sha256"] for e in m["engines"]] + [
            o["sha256"] for o in m["text"]["objects"].values()]

    (weights, files), (again, files_again) = export_random("a"), export_random("b")
    assert weights == again == {"kind": "none", "seed": 0} and files == files_again
    other_weights, other_files = export_random("c", "--seed", "7")
    assert other_weights == {"kind": "none", "seed": 7} and other_files != files
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((32, 32, 3), np.uint8))
    proc = run_cli("winclip-inspect", str(tmp_path / "a"), "--source", str(frames), "--out", str(tmp_path / "o"),
                   check=True)
    assert proc.stderr.count("has RANDOM weights") == 1 and "scores mean nothing" in proc.stderr, proc.stderr


def test_dynamo_exporter_writes_one_self_contained_graph(tiny_checkpoint, tiny_bundle, tmp_path):
    from winclip.runtime import Detector

    out = export(tmp_path / "dyn", tiny_checkpoint, TINY, exporter="dynamo", opset=18)
    m = json.loads((out / "manifest.json").read_text())
    assert m["engines"][0]["made_by"]["exporter"] == "dynamo" and m["engines"][0]["made_by"]["opset"] == 18
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "text", "visual.onnx"]
    frame = np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    a = Detector.from_bundle(out, object="bottle", provider="cpu", cache=False)(frame)[0]
    b = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)(frame)[0]
    assert json.loads((tiny_bundle / "manifest.json").read_text())["engines"][0]["made_by"]["exporter"] == "torchscript"
    assert abs(a.image_score - b.image_score) < 1e-5 and np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-5
