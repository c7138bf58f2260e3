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
    from winclip.runtime.sources import artifact_names

    src = tmp_path
    paths = [src / "a.png", src / "a.jpg", src / "x" / "y.png", src / "x__y.png", src / "b.png"]
    names = artifact_names(paths, src)
    assert len(set(names.values())) == len(paths)
    assert names[src / "b.png"] == "b" and names[src / "a.png"] == "a.png"


def test_reference_folder_runs_winclip_plus(tiny_bundle, source, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    for p in textile_images("nominal", 3):
        cv2.imwrite(str(ref / p.name), read(p))
    out = tmp_path / "out"
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(out),
                   "--object", "bottle", "--reference", str(ref), "--shots", "2")
    assert proc.returncode == 0, proc.stderr
    assert "memory from 2 normal images" in proc.stderr
    assert all(e["anomalous"] is None for e in _events(out) if "error" not in e)
    again = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(out), "--object", "bottle")
    assert again.returncode != 0 and "--force" in again.stderr


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
                 "--reference", str(ref), "--shots", "4")
    assert "has 1 images, fewer than the 4 asked for" in msg
    (ref / "b.png").write_bytes(b"garbage")
    assert "cannot decode" in _fails(str(tiny_bundle), "--source", str(source), "--out", out,
                                                "--object", "bottle", "--reference", str(ref))
    assert "has 0 images" in _fails(str(tiny_bundle), "--source", str(source), "--out", out, "--object", "bottle",
                                    "--reference", str(empty))
