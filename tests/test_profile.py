"""Line profiles: winclip-calibrate, thresholds from normal parts, the profile round trip, regions, refusals."""

import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import read, run_cli, textile_images
from winclip.calibration.profiles.setup import CalibrationError, calibrate, needed_for_rate
from winclip.calibration.evaluation.metrics import threshold_for_false_alarm_rate
from winclip.runtime import Detector
from winclip.runtime.errors import BundleError
from winclip.runtime.postprocess import find_regions
from winclip.runtime.profiles.profile import LineProfile, ProfileError


def paint_defect(image: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A dark scratch-like blob painted on a copy; returns the image and its box (x, y, w, h)."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    h, w = out.shape[:2]
    x, y = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
    bw, bh = w // 4, h // 4
    cv2.ellipse(out, (x + bw // 2, y + bh // 2), (bw // 2, bh // 2), 30, 0, 360, (20, 20, 200), -1)
    return out, (x, y, bw, bh)


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("normals")
    for p in textile_images("nominal", 14):
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def profile(tiny_bundle, normals, tmp_path_factory):
    out = tmp_path_factory.mktemp("profiles") / "line-1"
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--normal", str(normals), "--out", str(out),
                   "--object", "bottle", "--shots", "2", "--false-alarm-rate", "0.1", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "expected false alarms" in proc.stdout and "profile written to" in proc.stdout
    assert "cannot resolve a 10.00% false-alarm rate" not in proc.stderr  # 12 held out >= 10 needed
    return out


def test_threshold_for_a_false_alarm_rate_by_hand():
    scores = np.arange(1, 101) / 100.0  # 0.01 .. 1.00
    t = threshold_for_false_alarm_rate(scores, 0.01)
    assert 0.99 < t < 0.991 and (scores >= t).sum() == 1
    t = threshold_for_false_alarm_rate(scores, 0.05)
    assert (scores >= t).sum() == 5 and t > 0.95
    # fewer normals than the rate resolves: nothing may be flagged, the threshold sits above the top score
    assert (np.array([0.2, 0.3]) >= threshold_for_false_alarm_rate(np.array([0.2, 0.3]), 0.01)).sum() == 0
    assert needed_for_rate(0.01) == 100 and needed_for_rate(0.2) == 5


def test_calibrate_writes_a_profile_people_can_read(profile, normals):
    record = json.loads((profile / "profile.json").read_text())
    assert record["format"] == "winclip-edge-line-profile" and record["schema_version"] == 1
    assert record["bundle"]["object"] == "bottle" and record["bundle"]["precision"] == "fp32"
    assert len(record["bundle"]["graph_sha256"]) == 64
    chosen = record["normal_images"]
    assert chosen["shots"] == 2 and chosen["seed"] == 3 and len(chosen["memory"]) == 2 and len(chosen["held_out"]) == 12
    for entry in chosen["memory"]:
        assert hashlib.sha256((normals / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    image_t = record["thresholds"]["image"]
    assert image_t["method"] == "false-alarm-rate" and image_t["false_alarm_rate"] == 0.1
    # the target rate is met on the held-out normals: at most floor(0.1 * 12) = 1 flagged
    assert image_t["flagged_held_out"] <= 0.1 and record["expected_false_alarms_per_1000"] <= 100
    stats = record["normal_scores"]["image"]
    assert stats["count"] == 12 and stats["min"] <= stats["p50"] <= stats["max"]
    assert (stats["max"] >= image_t["value"]) == (image_t["flagged_held_out"] > 0)  # flagged iff the top reaches it
    for part in record["memory"]["arrays"].values():
        assert (profile / part["file"]).is_file()
    assert cv2.imread(str(profile / "histogram.png")).shape == (600, 800, 3)  # two panels: image and pixel scores


def test_calibrate_sets_the_thresholds_the_held_out_scores_call_for(tiny_bundle, profile, normals):
    """Worked out here from the held-out normals' own scores: at a 10% rate floor(0.1 x 12) = 1 of them may be
    flagged, so each threshold sits just above the second-highest held-out value, below the highest."""
    record = json.loads((profile / "profile.json").read_text())
    chosen = record["normal_images"]
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    det.build_memory([read(normals / entry["file"]) for entry in chosen["memory"]])
    results = [det(read(normals / entry["file"]))[0] for entry in chosen["held_out"]]
    tol = 1e-5  # batches of 4 there, of 1 here: the engine's sums may differ in the last float32 bits
    for kind, values in (("image", [r.image_score for r in results]),
                         ("pixel", [float(r.anomaly_map.max()) for r in results])):
        top, second, third = sorted(values, reverse=True)[:3]
        assert top - second > 10 * tol and second - third > 10 * tol, (kind, values)  # ranks tell apart
        value = record["thresholds"][kind]["value"]
        assert second - tol < value < second + tol, (kind, value, sorted(values))  # from below and from above
        assert sum(v >= value + tol for v in values) == 1  # the one false alarm the rate allows
    image_t = record["thresholds"]["image"]
    assert image_t["flagged_held_out"] == pytest.approx(1 / 12) and record["expected_false_alarms_per_1000"] == 83.3


def test_a_profile_is_refused_by_another_graph_of_the_same_geometry(tiny_bundle_copy, profile, normals, tmp_path):
    """Same shapes, other numbers: the fp32 profile on the bundle's int8 engine, and on the same model
    exported again with other weights. Its memory would load and score, and be wrong."""
    from conftest import TINY, export, make_model, save_checkpoint
    from winclip.calibration.engines.build import add_engine

    add_engine(tiny_bundle_copy, "int8", normals, accept_degraded=True)  # its guard is not the point here
    with pytest.raises(ProfileError, match="was made with the fp32 engine visual.onnx, and runs only with it: "
                                           "drop --precision int8"):
        Detector.from_bundle(tiny_bundle_copy, profile=profile, provider="cpu", precision="int8")
    int8 = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="int8")
    with pytest.raises(BundleError, match="does not fit this detector: it was made with engine graph"):
        int8.set_memory(LineProfile.load(profile).memory)  # the memory's own key refuses it too
    assert Detector.from_bundle(tiny_bundle_copy, profile=profile, provider="cpu").engine.precision == "fp32"
    checkpoint = save_checkpoint(make_model(TINY, seed=1), tmp_path / "other-weights.pt")
    other = export(tmp_path / "re-exported", checkpoint, TINY, objects=("bottle",))
    mine, theirs = (json.loads((b / "manifest.json").read_text()) for b in (tiny_bundle_copy, other))
    geometry = ("preprocess", "patch_size", "grid", "windows", "dims", "patch_features", "io")
    assert [mine[k] for k in geometry] == [theirs[k] for k in geometry]
    assert mine["engines"][0]["sha256"] != theirs["engines"][0]["sha256"]
    with pytest.raises(ProfileError, match="which this bundle does not have: re-run winclip-calibrate"):
        Detector.from_bundle(other, profile=profile, provider="cpu")


def test_inspect_with_the_profile_equals_inspect_with_its_normal_images(tiny_bundle, profile, normals, tmp_path):
    record = json.loads((profile / "profile.json").read_text())
    memory_dir = tmp_path / "memory"
    memory_dir.mkdir()
    for entry in record["normal_images"]["memory"]:
        shutil.copy(normals / entry["file"], memory_dir / entry["file"])
    source = tmp_path / "parts"
    source.mkdir()
    for i, p in enumerate(textile_images("local", 3)):
        shutil.copy(p, source / f"part-{i}.jpg")
    a = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(tmp_path / "a"),
                "--profile", str(profile))
    b = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(source), "--out", str(tmp_path / "b"),
                "--object", "bottle", "--normal", str(memory_dir))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ea = [json.loads(x) for x in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    eb = [json.loads(x) for x in (tmp_path / "b" / "events.jsonl").read_text().splitlines()]
    assert len(ea) == len(eb) == 3
    for x, y in zip(ea, eb):
        assert abs(x["image_score"] - y["image_score"]) < 1e-6
        assert x["threshold"] == pytest.approx(record["thresholds"]["image"]["value"])
        assert x["anomalous"] == (x["image_score"] >= x["threshold"]) and y["anomalous"] is None


def test_regions_outline_painted_defects(tiny_bundle, profile, tmp_path):
    """On real textiles with a painted blob, the largest region's box overlaps the painted box."""
    det = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu")
    assert det.pixel_threshold is not None
    hits = 0
    cases = textile_images("nominal", 4, start=20)
    for i, path in enumerate(cases):
        painted, (x, y, w, h) = paint_defect(read(path), seed=i)
        result = det(painted)[0]
        det_regions = find_regions(result.anomaly_map, det.pixel_threshold)
        if not det_regions:
            continue
        r = det_regions[0]
        overlap_w = min(r.x + r.width, x + w) - max(r.x, x)
        overlap_h = min(r.y + r.height, y + h) - max(r.y, y)
        hits += overlap_w > 0 and overlap_h > 0
        if result.anomalous:
            assert result.regions and result.regions[0] == r and r.peak >= det.pixel_threshold
    assert hits >= 3, f"the largest region overlapped the painted defect in {hits} of {len(cases)} frames"


def test_region_finding_by_hand():
    amap = np.zeros((40, 60), np.float32)
    amap[5:10, 5:20] = 0.8  # 75 px
    amap[30:35, 40:42] = 0.9  # 10 px
    amap[20, 20] = 0.4
    regions = find_regions(amap, 0.5)
    assert [(r.x, r.y, r.width, r.height, r.area) for r in regions] == [(5, 5, 15, 5, 75), (40, 30, 2, 5, 10)]
    assert regions[1].peak == pytest.approx(0.9) and regions[0].to_json()["box"] == [5, 5, 15, 5]
    assert find_regions(amap, 0.95) == []


def test_a_threshold_edited_by_hand_is_used(tiny_bundle, profile, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(profile, edited)
    record = json.loads((edited / "profile.json").read_text())
    record["thresholds"]["image"]["value"] = 0.123
    (edited / "profile.json").write_text(json.dumps(record, indent=2))
    det = Detector.from_bundle(tiny_bundle, profile=edited, provider="cpu")
    assert det.threshold == 0.123
    assert Detector.from_bundle(tiny_bundle, profile=edited, provider="cpu", threshold=0.5).threshold == 0.5


def _broken(profile, tmp_path, change):
    copy = tmp_path / "broken"
    shutil.copytree(profile, copy)
    change(copy)
    return copy


def test_profile_refusals(tiny_bundle, profile, tmp_path, tiny_checkpoint):
    def edit(fn):
        def apply(folder):
            record = json.loads((folder / "profile.json").read_text())
            fn(record)
            (folder / "profile.json").write_text(json.dumps(record))
        return apply

    cases = [
        (edit(lambda r: r["thresholds"]["image"].update(value="high")), "thresholds.image.value must be a number"),
        (edit(lambda r: r["thresholds"]["pixel"].update(value=1.5)), r"thresholds.pixel.value is 1.5, outside"),
        (edit(lambda r: r["memory"]["arrays"]["patches"].update(shape=[3, 3])), "the record says"),
        (edit(lambda r: r.update(schema_version=7)), "profile schema version 7 is not supported"),
        (lambda f: (f / "memory-patches.npy").write_bytes((f / "memory-patches.npy").read_bytes()[:-8] + b"\0" * 8),
         "checksum mismatch for line profile file memory-patches.npy: the line profile is corrupt"),
    ]
    for i, (change, message) in enumerate(cases):
        broken = _broken(profile, tmp_path / str(i), change)
        with pytest.raises(ProfileError, match=message):
            LineProfile.load(broken)
    with pytest.raises(ProfileError, match="is for object 'bottle', not 'metal nut'"):
        Detector.from_bundle(tiny_bundle, profile=profile, object="metal nut", provider="cpu")
    # the same memory under another object's name: the key check names the object
    moved = _broken(profile, tmp_path / "obj", edit(lambda r: r["memory"]["key"].update(object_name="metal nut")))
    with pytest.raises(ProfileError, match="made with object 'metal nut', this detector uses 'bottle'|not 'bottle'"):
        Detector.from_bundle(tiny_bundle, profile=moved, object="bottle", provider="cpu")
    # another engine graph (the same model exported again with other window scales)
    from conftest import TINY, export

    other = export(tmp_path / "other-bundle", tiny_checkpoint, TINY, objects=("bottle",), scales=(2,))
    with pytest.raises(ProfileError, match=r"was made with the fp32 engine visual.onnx \(sha256 [0-9a-f]{12}...\), "
                                           "which this bundle does not have: re-run winclip-calibrate with this bundle"):
        Detector.from_bundle(other, profile=profile, provider="cpu")


def test_calibrate_refusals(tiny_bundle, normals, tmp_path):
    out = str(tmp_path / "p")

    def fails(*args):
        proc = run_cli("winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--out", out, *args)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "p").exists()
        return errors[0]

    few = tmp_path / "few"
    few.mkdir()
    for p in textile_images("nominal", 4):
        shutil.copy(p, few / p.name)
    (few / "broken.jpg").write_bytes(b"not a jpeg")
    msg = fails("--normal", str(few), "--shots", "2")
    assert "has 4 usable normal images; 7 are needed at the least (2 for the memory + 5 held out)" in msg
    assert "--false-alarm-rate" in fails("--normal", str(normals), "--false-alarm-rate", "1.5")
    assert "--false-alarm-rate" in fails("--normal", str(normals), "--false-alarm-rate", "0")
    labelled = tmp_path / "labelled"
    (labelled / "good").mkdir(parents=True)
    shutil.copy(textile_images("nominal", 1, start=30)[0], labelled / "good" / "a.jpg")
    assert "holds no defect images" in fails("--normal", str(normals), "--labelled", str(labelled))
    assert "needs --labelled" in fails("--normal", str(normals), "--threshold-from", "f1-max")


def test_calibrate_with_labelled_parts_and_unreadable_normals(tiny_bundle, normals, tmp_path):
    folder = tmp_path / "normals"
    shutil.copytree(normals, folder)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    labelled = tmp_path / "labelled"
    (labelled / "good").mkdir(parents=True)
    (labelled / "stain").mkdir()
    for p in textile_images("nominal", 3, start=40):
        shutil.copy(p, labelled / "good" / p.name)
    for i, p in enumerate(textile_images("nominal", 3, start=50)):
        cv2.imwrite(str(labelled / "stain" / f"s{i}.png"), paint_defect(read(p), i)[0])
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    result = calibrate(det, folder, shots=2, false_alarm_rate=0.1, labelled_dir=labelled)
    assert result.record["normal_images"]["skipped"] == 1 and any("corrupt.jpg" in w for w in result.warnings)
    lab = result.record["labelled"]
    assert lab["good"] == 3 and lab["defect"] == 3 and lab["defect_kinds"] == ["stain"]
    assert 0.0 <= lab["image_auroc"] <= 1.0 and 0.0 < lab["f1_max"] <= 1.0
    assert result.record["thresholds"]["image_f1_max"]["value"] == lab["f1_max_threshold"]
    with pytest.raises(CalibrationError, match="must be in"):
        calibrate(det, folder, shots=2, false_alarm_rate=1.0)


def test_a_profile_saved_from_the_python_api_loads_back(tiny_bundle, normals, tmp_path):
    det = Detector.from_bundle(tiny_bundle, object="metal nut", provider="cpu", threshold=0.4, pixel_threshold=0.6)
    det.build_memory([read(p) for p in sorted(normals.iterdir())[:2]])
    path = det.to_profile({"note": "set up by hand"}).save(tmp_path / "p")
    back = LineProfile.load(path)
    assert (back.image_threshold, back.pixel_threshold, back.object_name) == (0.4, 0.6, "metal nut")
    assert back.record["note"] == "set up by hand" and back.record["bundle"]["graph_sha256"] == det.engine.sha256
    for k in det.memory.windows:
        np.testing.assert_array_equal(back.memory.windows[k], det.memory.windows[k])
    np.testing.assert_array_equal(back.memory.patches, det.memory.patches)
    again = Detector.from_bundle(tiny_bundle, profile=path, provider="cpu")
    frame = read(textile_images("local", 1)[0])
    assert again(frame)[0].image_score == pytest.approx(det(frame)[0].image_score, abs=1e-7)
    with pytest.raises(FileExistsError):
        det.to_profile().save(path)
    with pytest.raises(ValueError, match="needs a few-shot memory"):
        Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu").to_profile()
