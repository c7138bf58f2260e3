"""Line profiles that learn: the reference set winclip-calibrate keeps, new versions from taught good parts
(`winclip-calibrate --add-normal` and the Python API), undo, concurrent writers, the k-center memory cap, and the
old single-version profiles, on real textile images with the tiny model."""

from __future__ import annotations

import json
import shutil
import threading

import cv2
import numpy as np
import pytest

from conftest import read, run_cli, textile_images
from winclip.runtime import Detector
from winclip.runtime.memory import FewShotMemory
from winclip.runtime.profiles.profile import LineProfile, ProfileError
from winclip.runtime.profiles.versions import ProfileStore
from winclip.runtime.profiles.teach import GoodPart, rows_per_image, teach
from winclip.runtime.thresholds import threshold_for_false_alarm_rate

RATE = 0.05


def copy_images(folder, paths):
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tmp_path_factory):
    """A profile as winclip-calibrate writes it: 4 textile normals in the memory, 20 held out."""
    root = tmp_path_factory.mktemp("line")
    normals = copy_images(root / "normals", textile_images("nominal", 24))
    out = root / "line3"
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--normal", str(normals), "--out", str(out), "--object",
                   "bottle", "--shots", "4", "--false-alarm-rate", str(RATE))
    assert proc.returncode == 0, proc.stderr
    return out, normals


@pytest.fixture
def line3(calibrated, tmp_path):
    return shutil.copytree(calibrated[0], tmp_path / "line3")


@pytest.fixture(scope="module")
def detector(tiny_bundle, calibrated):
    return Detector.from_bundle(tiny_bundle, profile=calibrated[0], provider="cpu", threads=1)


def parts(start: int, n: int) -> list[GoodPart]:
    return [GoodPart(read(p), p.name, {"file": p.name}) for p in textile_images("nominal", n, start=start)]


def test_calibrate_keeps_the_held_out_reference_and_its_scores_are_the_detectors(calibrated, detector):
    out, normals = calibrated
    record = json.loads((out / "profile.json").read_text())
    held_out = [e["file"] for e in record["normal_images"]["held_out"]]
    reference = record["reference"]
    assert reference["held_out"]["count"] == 20 and reference["held_out"]["names"] == held_out
    results = detector([read(normals / name) for name in held_out])
    np.testing.assert_allclose(reference["image_scores"], [r.image_score for r in results], atol=2e-6)
    np.testing.assert_allclose(reference["map_max"], [r.anomaly_map.max() for r in results], atol=2e-6)
    image_t = threshold_for_false_alarm_rate(np.array([r.image_score for r in results]), RATE)
    assert abs(record["thresholds"]["image"]["value"] - image_t) < 2e-6
    for entry in reference["held_out"]["arrays"].values():
        assert (out / entry["file"]).is_file() and entry["shape"][0] == 20


def test_add_normal_writes_a_new_version_and_the_old_one_stays_loadable(tiny_bundle, calibrated, line3, detector,
                                                                        tmp_path):
    added = copy_images(tmp_path / "new-roll", textile_images("nominal", 3, start=100))
    before = [r.image_score for r in detector([read(p) for p in sorted(added.iterdir())])]
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--out", str(line3), "--add-normal", str(added),
                   "--who", "alice", "--why", "a new roll of fabric")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"version 2 of {line3}: 3 images added; memory of 7 images")
    versions = json.loads((line3 / "versions.json").read_text())
    assert versions["current"] == 2 and [v["version"] for v in versions["versions"]] == [1, 2]
    v1, v2 = versions["versions"]
    assert v1["action"] == "calibrate" and v1["folder"] == "v1"
    assert (v2["who"], v2["why"], v2["parent"], v2["action"]) == ("alice", "a new roll of fabric", 1, "add-normal")
    assert [a["name"] for a in v2["details"]["added"]] == sorted(p.name for p in added.iterdir())
    assert versions["log"][-1]["to"] == 2 and versions["log"][-1]["who"] == "alice"
    assert not (line3 / "profile.json").exists() and (line3 / "v1" / "profile.json").is_file()

    # the previous version is the calibrated profile, unchanged and loadable by its folder
    original, first = LineProfile.load(calibrated[0]), LineProfile.load(line3 / "v1")
    assert np.array_equal(first.memory.patches, original.memory.patches)
    assert first.image_threshold == original.image_threshold
    assert Detector.from_bundle(tiny_bundle, profile=line3 / "v1", provider="cpu").threshold == original.image_threshold

    # the new one: 7 images in memory, the added images kept as they were (lossless), thresholds re-derived
    current = LineProfile.load(line3)
    assert current.memory.shots == 7 and current.memory.patches.shape[0] == 7 * rows_per_image(original.memory)["patches"]
    for entry in current.record["taught"]:
        kept = cv2.imread(str(line3 / "v2" / entry["file"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(kept, read(added / entry["origin"]["file"]))
    taught = Detector.from_bundle(tiny_bundle, profile=line3, provider="cpu")
    held_out = [read(calibrated[1] / e["file"]) for e in original.record["normal_images"]["held_out"]]
    new = taught([*held_out, *[read(p) for p in sorted(added.iterdir())]])
    assert abs(taught.threshold - threshold_for_false_alarm_rate(np.array([r.image_score for r in new]), RATE)) < 2e-6
    assert abs(taught.pixel_threshold - threshold_for_false_alarm_rate(
        np.array([r.anomaly_map.max() for r in new]), RATE)) < 2e-6
    after = [r.image_score for r in new[-3:]]
    assert all(a < b for a, b in zip(after, before)), (before, after)  # their features are in the memory now


def test_undo_goes_back_one_version_and_every_change_is_logged(line3, detector):
    store = ProfileStore(line3)
    assert teach(detector, store, parts(100, 2), who="alice", why="batch 7").number == 2
    assert teach(detector, store, parts(110, 1), who="alice", why="batch 8").number == 3
    left, back = store.undo("bob", "batch 8 was bad")
    assert (left.number, back.number) == (3, 2) and LineProfile.load(line3).memory.shots == 6
    assert store.undo("bob")[1].number == 1 and LineProfile.load(line3).memory.shots == 4
    with pytest.raises(ProfileError, match="is its first: nothing to undo"):
        store.undo("bob")
    branch = teach(detector, store, parts(120, 1), who="carol", why="start again")
    assert branch.number == 4 and branch.entry["parent"] == 1 and LineProfile.load(line3).memory.shots == 5
    assert store.load(3)[0].memory.shots == 7  # nothing is deleted by an undo
    history = store.history()
    assert [(e["action"], e["from"], e["to"], e["who"]) for e in history["log"]] == [
        ("teach", 1, 2, "alice"), ("teach", 2, 3, "alice"), ("undo", 3, 2, "bob"), ("undo", 2, 1, "bob"),
        ("teach", 1, 4, "carol")]


def test_concurrent_writers_never_lose_or_corrupt_a_version(tiny_bundle, line3, detector, tmp_path):
    """Two threads and a second process change the profile at once: every change is a version, none lost."""
    added = copy_images(tmp_path / "cli", textile_images("nominal", 2, start=300))
    start, errors = threading.Barrier(2), []

    def writer(first: int):
        try:
            start.wait()
            teach(detector, ProfileStore(line3), parts(first, 2), who=f"thread {first}", why="concurrent")
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (130, 140)]
    for t in threads:
        t.start()
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--out", str(line3), "--add-normal", str(added))
    for t in threads:
        t.join(60)
    assert not errors and proc.returncode == 0, (errors, proc.stderr)
    versions = json.loads((line3 / "versions.json").read_text())
    numbers = [v["version"] for v in versions["versions"]]
    assert numbers == [1, 2, 3, 4] and versions["current"] == 4
    assert [v["parent"] for v in versions["versions"]] == [None, 1, 2, 3]  # each built on the one before
    shots = [ProfileStore(line3).load(n)[0].memory.shots for n in numbers]
    assert shots == [4, 6, 8, 10]  # no change lost
    assert not [p for p in line3.iterdir() if ".partial" in p.name]


def test_a_memory_cap_keeps_a_k_center_cover_of_the_rows(line3, detector):
    store = ProfileStore(line3)
    base = store.load()[0]
    new_parts = parts(150, 3)
    version = teach(detector, store, new_parts, who="alice", why="cap", max_shots=5)
    capped = LineProfile.load(line3).memory  # a capped memory loads back
    per_image = rows_per_image(base.memory)
    assert capped.shots == 7 and capped.patches.shape[0] == 5 * per_image["patches"]
    assert version.entry["details"]["memory"]["selection"]["patches"]["offered"] == 7 * per_image["patches"]
    outputs = detector.embed([p.image for p in new_parts])[0]
    full = base.memory.joined(FewShotMemory.from_outputs(outputs, detector.memory_key))
    for part, kept in capped.arrays().items():
        rows = full.arrays()[part]
        radius = capped.selection[part]["radius"]
        nearest = (rows @ kept.T).max(axis=1)
        assert np.isclose(nearest.max(), 1.0, atol=1e-5)  # kept rows are rows of the full memory
        assert (1.0 - nearest).max() <= radius + 1e-5  # every dropped row lies within the reported radius


def test_profiles_without_a_reference_still_load_and_say_why_they_cannot_be_taught(tiny_bundle, line3, detector):
    record = json.loads((line3 / "profile.json").read_text())
    del record["reference"]  # a profile from before this version kept one
    (line3 / "profile.json").write_text(json.dumps(record))
    assert Detector.from_bundle(tiny_bundle, profile=line3, provider="cpu").memory.shots == 4
    with pytest.raises(ProfileError, match="keeps no reference set .* re-run winclip-calibrate"):
        teach(detector, ProfileStore(line3), parts(100, 1), who="alice", why="")
    assert not (line3 / "versions.json").exists() and (line3 / "profile.json").is_file()  # left as it was


def test_orphans_symlinks_and_version_folders(line3, detector, tmp_path, caplog):
    store = ProfileStore(line3)
    teach(detector, store, parts(100, 1), who="a", why="")
    (line3 / "v9").mkdir()  # a writer that died before naming its folder
    (line3 / "v9" / "profile.json").write_text("{}")
    caplog.set_level("WARNING")
    assert teach(detector, store, parts(101, 1), who="a", why="").number == 3
    assert not (line3 / "v9").exists() and any("v9" in r.getMessage() for r in caplog.records)
    with pytest.raises(ProfileError, match="is version 2 of the profile"):
        ProfileStore(line3 / "v2")
    data = json.loads((line3 / "versions.json").read_text())
    data["versions"][0]["folder"] = "../elsewhere"
    (line3 / "versions.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="folder must be v1"):
        LineProfile.load(line3)
    (line3 / "versions.json").unlink()
    (tmp_path / "versions.json").write_text(json.dumps(data))
    (line3 / "versions.json").symlink_to(tmp_path / "versions.json")
    with pytest.raises(ProfileError, match="not a regular file"):
        LineProfile.load(line3)


def test_add_normal_usage(tiny_bundle, line3, tmp_path):
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--out", str(line3), "--add-normal", str(tmp_path),
                   "--normal", str(tmp_path))
    assert proc.returncode == 2 and "--normal makes a new profile; --add-normal changes the one at --out" in proc.stderr
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--out", str(tmp_path / "p"), "--normal", str(tmp_path),
                   "--why", "x")
    assert proc.returncode == 2 and "--who and --why go with --add-normal" in proc.stderr
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--out", str(line3), "--add-normal", str(tmp_path / "none"))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("Error: ")
