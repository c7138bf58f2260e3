"""winclip-inspect on folders of real images (tiny model)."""

import json

import cv2
import numpy as np
import pytest

from conftest import elpv_images, read, run_cli, textile_images


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for p in textile_images("local", 2):
        cv2.imwrite(str(src / p.name.replace(".jpg", ".png")), read(p))
    cv2.imwrite(str(src / "sub" / "cell.png"), read(elpv_images(1)[0]))
    cv2.imwrite(str(src / "sixteen_bit.png"), (read(elpv_images(1)[0]).astype(np.uint16) * 257))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return src


def _events(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_scores_a_folder_with_maps_and_overlays(tiny_bundle, source, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(out),
                   "--object", "metal_nut", "--save-maps", "--save-overlays", "--threshold", "0.5",
                   "--provider", "cpu", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    events = _events(out)
    assert len(events) == 5
    bad = [e for e in events if "error" in e]
    assert len(bad) == 1 and bad[0]["source"].endswith("broken.png") and "cannot decode" in bad[0]["error"]
    good = [e for e in events if "error" not in e]
    for e in good:
        assert 0 <= e["image_score"] <= 1 and isinstance(e["anomalous"], bool)
        assert e["anomalous"] == (e["image_score"] >= 0.5)
        assert set(e["latency_ms"]) == {"preprocess", "engine", "scoring", "upsample", "total"}
        amap = np.load(e["map"], allow_pickle=False)
        assert amap.dtype == np.float32 and amap.shape == (e["height"], e["width"])
        assert cv2.imread(e["overlay"]).shape[:2] == amap.shape
    assert (out / "maps" / "sub__cell.npy").exists() and (out / "overlays" / "sixteen_bit.png").exists()
    assert not list(out.rglob(".tmp-*"))
    assert "4 scored, 1 errors" in proc.stderr and not (out / "events.jsonl.partial").exists()
    assert not list(out.rglob(".tmp-*"))


def test_output_names_never_collide(tmp_path):
    from winclip.runtime.line.frames import artifact_names

    src = tmp_path
    paths = [src / "a.png", src / "a.jpg", src / "x" / "y.png", src / "x__y.png", src / "b.png"]
    names = artifact_names(paths, src)
    assert len(set(names.values())) == len(paths)
    assert names[src / "b.png"] == "b" and names[src / "a.png"] == "a.png"


def test_normal_folder_runs_winclip_plus_like_the_torch_reference(tiny_bundle, tiny_model, source, tmp_path):
    from conftest import TINY, open_clip_prototypes
    from winclip.export.torch_winclip import TorchWinClip, read_rgb

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    normals = textile_images("nominal", 3)
    for p in normals:
        cv2.imwrite(str(ref_dir / p.name), read(p))
    out = tmp_path / "out"
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(out),
                   "--object", "bottle", "--normal", str(ref_dir), "--shots", "2")
    assert proc.returncode == 0, proc.stderr
    assert "memory from 2 normal images" in proc.stderr
    torch_side = TorchWinClip(tiny_model, open_clip_prototypes(tiny_model, TINY, "bottle"))
    torch_side.set_normal_images([read_rgb(ref_dir / p.name) for p in sorted(normals)[:2]])
    scored = [e for e in _events(out) if "error" not in e]
    assert len(scored) == 4 and all(e["anomalous"] is None for e in scored)
    for e in scored:
        (score, _), = torch_side([read_rgb(e["source"])])
        assert abs(e["image_score"] - score) < 1e-4, e["source"]
    again = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(out), "--object", "bottle")
    assert again.returncode != 0 and "--force" in again.stderr


def test_a_batch_with_a_bad_frame_still_scores_the_others(tiny_bundle, tmp_path):
    """--batch-size 3 with a NaN image in the middle: the batch is retried frame by frame."""
    src = tmp_path / "src"
    src.mkdir()
    for i, p in enumerate(textile_images("local", 2)):
        cv2.imwrite(str(src / f"{2 * i}.png"), read(p))
    cv2.imwrite(str(src / "1.tiff"), np.full((30, 30), np.nan, np.float32))
    out = tmp_path / "out"
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src), "--out", str(out), "--object", "bottle",
                   "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr
    events = _events(out)
    assert [("error" in e) for e in events] == [False, True, False] and "NaN" in events[1]["error"]
    from winclip.runtime import Detector

    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    assert abs(events[2]["image_score"] - det(read(src / "2.png"))[0].image_score) < 1e-6


def test_no_cache_writes_no_cache(tiny_bundle, source, tmp_path):
    cache_home = tmp_path / "xdg"
    env = {"XDG_CACHE_HOME": str(cache_home)}
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(tmp_path / "a"),
                   "--object", "bottle", "--no-cache", env=env)
    assert proc.returncode == 0 and not any(cache_home.rglob("*.onnx")) and not any(cache_home.rglob("*.ok"))
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(tmp_path / "b"),
                   "--object", "bottle", env=env)
    assert proc.returncode == 0 and len(list(cache_home.rglob("*.onnx"))) == 1


def test_the_installed_console_scripts_run(tiny_bundle, source, tmp_path):
    """The entry points themselves (not python -m): each answers --help, and winclip-inspect scores a folder."""
    for name in ("winclip-export", "winclip-inspect", "winclip-quantize", "winclip-calibrate", "winclip-bench"):
        proc = run_cli(name, "--help", script=True)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: ") and "--help" in proc.stdout, name
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(tmp_path / "o"),
                   "--object", "bottle", script=True)
    assert proc.returncode == 0 and "4 scored, 1 errors" in proc.stderr


def _fails(*args):
    proc = run_cli("winclip-inspect", *args)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_bad_input_is_one_line(tiny_bundle, source, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "o")
    assert "no images found" in _fails(str(tiny_bundle), "--source", str(empty), "--out", out, "--object", "bottle")
    assert "not found" in _fails(str(tiny_bundle), "--source", str(tmp_path / "nope"), "--out", out)
    assert "manifest.json is missing" in _fails(str(tmp_path), "--source", str(source), "--out", out)
    msg = _fails(str(tiny_bundle), "--source", str(source), "--out", out, "--object", "screw")
    assert "'bottle', 'metal nut'" in msg
    assert "choose one of" in _fails(str(tiny_bundle), "--source", str(source), "--out", out)
    ref = tmp_path / "ref"
    ref.mkdir()
    cv2.imwrite(str(ref / "a.png"), read(textile_images("nominal", 1)[0]))
    msg = _fails(str(tiny_bundle), "--source", str(source), "--out", out, "--object", "bottle",
                 "--normal", str(ref), "--shots", "4")
    assert "has 1 images, fewer than the 4 asked for" in msg
    (ref / "b.png").write_bytes(b"garbage")
    assert "cannot decode" in _fails(str(tiny_bundle), "--source", str(source), "--out", out,
                                                "--object", "bottle", "--reference", str(ref))
    assert "has 0 images" in _fails(str(tiny_bundle), "--source", str(source), "--out", out, "--object", "bottle",
                                    "--reference", str(empty))
