"""Hostile input, by class (issue 20): each test holds a whole class of holes, not one example.

- an engine whose own record does not vouch for it is never picked by `--precision auto`;
- a data set never makes the evaluation read outside its root;
- special files (FIFOs, devices) are never read, and no file is read past its size cap;
- bad input ends in one line of ours: from a command, and as one of our errors from the API;
- writers of one bundle, profile or output folder take turns, and an interrupted write is cleaned up;
- credentials in URLs never reach a message, and numeric options are range-checked when parsed;
- a profile file that leads out of its folder is refused; long lists of skipped items are summarised.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli, textile_images
from winclip.runtime import Detector
from winclip.runtime.errors import BundleError, WinclipError


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _add_fake_engine(bundle: Path, made_by: dict, guard: dict | None, accepted_degraded: bool = False) -> str:
    """An int8 entry whose file is a copy of the fp32 graph (it runs), with the record given."""
    import hashlib

    data = (bundle / "visual.onnx").read_bytes()
    name = "visual-int8-fake.onnx"
    (bundle / name).write_bytes(data)
    m = _manifest(bundle)
    m["engines"] = [e for e in m["engines"] if e["precision"] != "int8"] + [{
        "file": name, "precision": "int8", "sha256": hashlib.sha256(data).hexdigest(), "made_by": made_by,
        **({"guard": guard} if guard is not None else {}), "accepted_degraded": accepted_degraded}]
    (bundle / "manifest.json").write_text(json.dumps(m))
    return name


GOOD_GUARD = {"passed": True, "failures": [], "limits": {"map_pearson_median": 0.99, "map_pearson_min": 0.97,
                                                          "score_spearman": 0.98, "embedding_cosine_min": 0.99}}


@pytest.mark.parametrize("made_by,guard,why", [
    ({"tool": "someone-elses-quantizer"}, GOOD_GUARD, "made by 'someone-elses-quantizer'"),
    ({}, GOOD_GUARD, "names no maker"),
    ({"tool": "winclip-quantize"}, None, "no accuracy-guard record"),
    ({"tool": "winclip-quantize"}, {**GOOD_GUARD, "passed": False, "failures": ["map pearson min 0.5 < 0.97"]},
     "FAILED its accuracy guard"),
    ({"tool": "winclip-quantize"}, {**GOOD_GUARD, "limits": {**GOOD_GUARD["limits"], "map_pearson_min": 0.2}},
     "looser than today's"),
    # made before the cosine limit existed: its recorded cosines must meet today's limit
    ({"tool": "winclip-quantize"}, {**GOOD_GUARD, "limits": {k: v for k, v in GOOD_GUARD["limits"].items()
                                                            if k != "embedding_cosine_min"},
                                    "embedding_cosine_min": {"image_embedding": 0.999, "patch_features": 0.95}},
     "below today's limit 0.99"),
])
def test_auto_never_picks_an_engine_its_record_does_not_vouch_for(tiny_bundle_copy, made_by, guard, why, caplog):
    _add_fake_engine(tiny_bundle_copy, made_by, guard)
    auto = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)
    assert auto.engine.precision == "fp32"
    caplog.clear()
    asked = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="int8", cache=False)
    assert asked.engine.precision == "int8"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "not vouched for" in warned[0] and why in warned[0], warned


def test_auto_picks_an_engine_whose_record_vouches_for_it(tiny_bundle_copy, caplog):
    _add_fake_engine(tiny_bundle_copy, {"tool": "winclip-quantize"}, GOOD_GUARD)
    det = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)
    assert det.engine.precision == "int8" and "auto: guarded int8 on CPU" in det.describe()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ---- a data set never leads outside its root
def test_a_data_set_cannot_make_the_evaluation_read_outside_it(tmp_path):
    from winclip.calibration.evaluation.layouts import read_dataset

    outside = tmp_path / "outside.png"
    cv2.imwrite(str(outside), np.zeros((8, 8), np.uint8))
    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    (root / "cat").mkdir()
    for name in ("good.png", "bad.png", "mask.png"):
        cv2.imwrite(str(root / "cat" / name), np.zeros((8, 8), np.uint8))
    os.symlink(outside, root / "cat" / "link.png")
    rows = ["object,split,label,image,mask",
            "cat,test,normal,cat/good.png,",
            "cat,test,anomaly,cat/bad.png,cat/mask.png",
            "cat,test,normal,/etc/passwd,",
            "cat,test,normal,../outside.png,",
            "cat,test,normal,cat/link.png,",
            "cat,train,normal,/proc/self/environ,",
            "cat,test,anomaly,cat/bad.png,../outside.png"]
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (category,) = read_dataset(root, "visa")
    used = [s.path for s in category.test] + category.references + [s.mask for s in category.test if s.mask]
    assert all(p.resolve().is_relative_to(root.resolve()) for p in used), used
    assert len(category.test) == 2 and not category.references
    outside_rows = [line for line in category.skipped if "leads outside the data set" in line]
    assert len(outside_rows) == 5, category.skipped
    # the folder layout: a symlink among the images that points out is skipped, said so
    folder = tmp_path / "folder"
    for kind in ("good", "scratch"):
        (folder / kind).mkdir(parents=True)
        cv2.imwrite(str(folder / kind / "a.png"), np.zeros((8, 8), np.uint8))
    os.symlink(outside, folder / "scratch" / "b.png")
    (category,) = read_dataset(folder, "folder")
    assert [s.path.name for s in category.test if s.label] == ["a.png"]
    assert any("b.png: leads outside the data set" in line for line in category.skipped)


# ---- special files and size caps
@pytest.fixture
def fifo_folder(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(textile_images("nominal", 3)):
        shutil.copy(p, folder / f"{i}.jpg")
    os.mkfifo(folder / "pipe.png")  # named like an image; opening it for reading would wait forever
    os.symlink("/dev/zero", folder / "zero.png")  # never ends
    return folder


def test_special_files_are_reported_never_read(fifo_folder):
    from winclip.runtime.images import ImageReadError, list_images, read_image

    paths, problems = list_images(fifo_folder)
    assert [p.name for p in paths] == ["0.jpg", "1.jpg", "2.jpg"]
    assert sorted(p.split(": ", 1)[1] for p in problems) == ["it is a FIFO, not a regular file",
                                                             "it is a character device, not a regular file"]
    for name in ("pipe.png", "zero.png"):
        with pytest.raises(ImageReadError, match="not a regular file"):
            read_image(fifo_folder / name)


def test_no_command_hangs_on_a_fifo(tiny_bundle, fifo_folder, tmp_path):
    for args in (["winclip-inspect", str(tiny_bundle), "--object", "bottle", "--source", str(fifo_folder),
                  "--out", str(tmp_path / "out")],
                 ["winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--normal", str(fifo_folder),
                  "--shots", "1", "--out", str(tmp_path / "profile")]):
        proc = run_cli(*args, timeout=120)  # a hang is a TimeoutExpired here, a failure
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert "FIFO" in proc.stderr  # calibration names what it skipped
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    errors = [e["error"] for e in events if "error" in e]
    assert len(errors) == 2 and any("FIFO" in e for e in errors) and sum("image_score" in e for e in events) == 3


def test_an_image_file_over_the_size_cap_is_not_read(tmp_path, monkeypatch):
    from winclip.runtime.images import ImageReadError, read_image

    big = tmp_path / "big.png"
    ok, data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), np.uint8))
    big.write_bytes(data.tobytes())
    assert big.stat().st_size > 1 << 20
    monkeypatch.setenv("WINCLIP_MAX_IMAGE_MB", "1")
    with pytest.raises(ImageReadError, match="more than the 1,048,576 allowed"):
        read_image(big)
    monkeypatch.setenv("WINCLIP_MAX_IMAGE_MB", "16")
    assert read_image(big).shape == (1200, 1200, 3)


def test_a_huge_consistent_memory_array_is_refused_before_it_is_read(tiny_bundle, tmp_path, monkeypatch):
    from winclip.runtime import memory
    from winclip.runtime.profiles.profile import LineProfile, ProfileError

    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=0.5, pixel_threshold=0.5)
    det.build_memory([cv2.imread(str(p)) for p in textile_images("nominal", 2)])
    root = det.to_profile().save(tmp_path / "profile")
    size = sum(p.stat().st_size for p in root.glob("memory-*.npy"))
    monkeypatch.setattr(memory, "MAX_MEMORY_BYTES", size // 2)  # as if consistent arrays were huge
    read = []
    monkeypatch.setattr(memory, "read_checked", lambda *a, **k: read.append(a) or b"")
    with pytest.raises(ProfileError, match="more than the .* a memory may have"):
        LineProfile.load(root)
    assert not read  # refused from the record's shape, before a byte of the array was read


def test_a_fifo_in_place_of_a_bundle_file_is_refused_not_waited_on(tiny_bundle_copy):
    manifest = tiny_bundle_copy / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    with pytest.raises(BundleError, match="FIFO"):
        load_in_thread(tiny_bundle_copy)


def load_in_thread(path):
    """Bundle.load in a thread: a read that blocks must fail the test, not hang it."""
    from winclip.runtime.bundle import Bundle

    result = {}

    def load():
        try:
            result["value"] = Bundle.load(path)
        except Exception as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "Bundle.load blocked on a special file"
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---- one line from a command; our errors from the API
@pytest.mark.parametrize("value", [10**400, float("nan"), float("inf"), -1e-9, "0.5", True])
def test_settings_out_of_range_are_our_errors(tiny_bundle, value):
    from winclip.runtime.defaults import check_temperature, check_threshold
    from winclip.runtime.errors import SettingError

    with pytest.raises(SettingError):
        check_threshold(value)
    with pytest.raises(WinclipError):
        Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=value)
    if value is not True and value != "0.5" and value != -1e-9:
        with pytest.raises(SettingError):
            check_temperature(value)


def test_an_unreadable_bundle_is_our_error_from_the_api_and_one_line_from_a_command(tiny_bundle_copy, monkeypatch,
                                                                                   tmp_path):
    from click.testing import CliRunner

    from winclip.runtime import bundle as bundle_module
    from winclip.runtime.line.cli import main

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bundle_module, "read_json", denied)  # root reads anything: the OS's refusal is simulated
    with pytest.raises(BundleError, match="cannot read the bundle .*Permission denied"):
        bundle_module.Bundle.load(tiny_bundle_copy)
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.zeros((8, 8), np.uint8))
    result = CliRunner().invoke(main, [str(tiny_bundle_copy), "--source", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Permission denied" in result.output, \
        result.output


def test_a_full_disk_while_quantizing_is_one_line(tiny_bundle_copy, tmp_path, monkeypatch):
    import errno

    from winclip.calibration.engines import build
    from winclip.calibration.engines.build import QuantizeError, add_engine
    from winclip.calibration.engines.guard import GuardLimits

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(textile_images("nominal", 8)):
        shutil.copy(p, folder / f"{i}.jpg")

    def full(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(build, "write_atomic", full)
    with pytest.raises(QuantizeError, match="File too large; nothing was changed"):
        add_engine(tiny_bundle_copy, "int8", folder, limits=GuardLimits(map_pearson_median=0.0, map_pearson_min=0.0,
                                                                         score_spearman=0.0, embedding_cosine_min=0.0))
    assert [e["precision"] for e in _manifest(tiny_bundle_copy)["engines"]] == ["fp32"]


# ---- writers take turns; interrupted writes are cleaned up
def test_a_second_writer_of_a_bundle_is_refused_naming_the_first(tiny_bundle_copy, tmp_path):
    from winclip.calibration.engines.build import LOCK_NAME, add_engine
    from winclip.runtime.locks import Locked, writer_lock

    with writer_lock(tiny_bundle_copy / LOCK_NAME, "the bundle"):
        with pytest.raises(Locked, match=r"being written by another run \(.*pid \d+ on"):
            add_engine(tiny_bundle_copy, "int8", tmp_path)


def test_an_engine_left_by_a_killed_write_is_removed_at_the_next_write(tiny_bundle_copy, tmp_path, caplog):
    from winclip.calibration.engines.build import add_engine
    from winclip.calibration.engines.guard import GuardLimits

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(textile_images("nominal", 8)):
        shutil.copy(p, folder / f"{i}.jpg")
    (tiny_bundle_copy / "visual-int8-0123456789ab.onnx").write_bytes(b"half an engine")  # kill -9 after step one
    (tiny_bundle_copy / ".tmp-x1.part").write_bytes(b"half a file")
    engine = add_engine(tiny_bundle_copy, "int8", folder, limits=GuardLimits(0.0, 0.0, 0.0))
    names = {p.name for p in tiny_bundle_copy.iterdir()}
    assert "visual-int8-0123456789ab.onnx" not in names and ".tmp-x1.part" not in names and engine.file in names
    assert any("removed 2 leftover(s) of an interrupted write" in r.getMessage() for r in caplog.records)


def test_two_runs_on_one_out_folder(tiny_bundle, tmp_path):
    from winclip.runtime.line.cli import LOCK_NAME
    from winclip.runtime.locks import writer_lock

    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    with writer_lock(out / LOCK_NAME, "the output folder"):
        proc = run_cli("winclip-inspect", str(tiny_bundle), "--object", "bottle", "--source", str(src), "--out",
                       str(out))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 1 and len(errors) == 1 and "being written by another run" in errors[0], proc.stderr
    assert "pid" in errors[0] and not (out / "events.jsonl").exists()


def test_a_profile_written_twice_at_once_stays_whole(tiny_bundle, tmp_path):
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=0.5, pixel_threshold=0.5)
    det.build_memory([cv2.imread(str(p)) for p in textile_images("nominal", 2)])
    profile = det.to_profile()
    target = tmp_path / "line3"
    outcomes = []

    def save():
        try:
            profile.save(target, force=True)
            outcomes.append("saved")
        except WinclipError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "saved" in outcomes and all(o == "saved" or "being written by another run" in o for o in outcomes)
    from winclip.runtime.profiles.profile import LineProfile

    assert LineProfile.load(target).image_threshold == 0.5
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# ---- credentials and ranges
def test_webhook_credentials_never_reach_a_message(caplog):
    from winclip.runtime.line.sinks.webhook import WebhookSink, check_webhook_url

    caplog.set_level(logging.WARNING, logger="winclip")
    url = "http://alice:s3cret@127.0.0.1:9/hook?token=abc123&site=7"  # port 9: nothing answers
    sink = WebhookSink(url, timeout=0.2)
    sink.write({"source": "cam", "frame": 1, "anomalous": True})
    sink.close(timeout=0.5)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "webhook http://127.0.0.1:9/hook?token=***&site=7 failed" in text
    assert "alice" not in text and "s3cret" not in text and "abc123" not in text
    with pytest.raises(ValueError) as exc:
        check_webhook_url("ftp://bob:hunter2@host/x")
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize("option,value", [("--rotate-mb", "nan"), ("--rotate-mb", "inf"), ("--rotate-keep", "10000000"),
                                          ("--duration", "nan"), ("--stall-timeout", "-1"), ("--every", "0"),
                                          ("--temperature", "nan"), ("--flush-timeout", "1e9")])
def test_every_numeric_option_is_range_checked_when_parsed(tiny_bundle, option, value, tmp_path):
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", "0", "--out", str(tmp_path), option, value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and f"'{option}'" in proc.stderr, proc.stderr


def test_every_numeric_option_of_every_command_is_bounded():
    """A number option is a bounded range (shown in --help) or checked by a callback; none takes any float or int."""
    import click

    from winclip.benchmarks.bench_cli import main as bench
    from winclip.calibration.engines.cli import main as quantize
    from winclip.calibration.evaluation.cli import main as evaluate
    from winclip.calibration.profiles.cli import main as calibrate
    from winclip.export.cli import main as export
    from winclip.runtime.line.cli import main as inspect

    commands = [inspect, calibrate, quantize, export, bench, *evaluate.commands.values()]
    checked = 0
    for command in commands:
        for param in command.params:
            if isinstance(param.type, (click.IntRange, click.FloatRange)):
                assert param.type.min is not None and param.type.max is not None, f"{command.name} --{param.name}"
                checked += 1
            else:
                assert param.type not in (click.INT, click.FLOAT) or param.callback is not None, \
                    f"{command.name} --{param.name} takes any number"
    assert checked >= 20


# ---- profiles and long lists
def test_a_profile_json_that_leads_out_of_its_folder_is_refused(tiny_bundle, tmp_path):
    from winclip.runtime.profiles.profile import LineProfile, ProfileError

    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=0.5, pixel_threshold=0.5)
    det.build_memory([cv2.imread(str(p)) for p in textile_images("nominal", 2)])
    root = det.to_profile().save(tmp_path / "profile")
    elsewhere = tmp_path / "elsewhere.json"
    shutil.move(root / "profile.json", elsewhere)
    os.symlink(elsewhere, root / "profile.json")
    with pytest.raises(ProfileError, match="resolves outside the line profile directory"):
        LineProfile.load(root)


def test_thousands_of_skipped_images_are_summarised(tiny_bundle, tmp_path):
    folder = tmp_path / "normals"
    folder.mkdir()
    for i, p in enumerate(textile_images("nominal", 8)):
        shutil.copy(p, folder / f"{i}.jpg")
    for i in range(300):
        (folder / f"broken-{i:03d}.png").write_bytes(b"not an image")
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--normal", str(folder), "--shots", "2",
                   "--out", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert len(skipped) <= 6 and any("295 more like these" in line for line in skipped), proc.stderr
    assert "\x1b[" not in proc.stderr  # no colour codes when stderr is not a terminal


def test_commands_print_no_traceback_for_any_refusal_in_this_file(tiny_bundle, tmp_path):
    """A sweep: odd inputs to every command end in one 'Error:' line (or a usage line), never a traceback."""
    cases = [
        ("winclip-inspect", str(tiny_bundle), "--source", "/nonexistent", "--out", str(tmp_path / "a")),
        ("winclip-calibrate", str(tiny_bundle), "--normal", "/nonexistent", "--out", str(tmp_path / "b")),
        ("winclip-quantize", str(tiny_bundle), "--precision", "int8", "--images", "/nonexistent"),
        ("winclip-eval", str(tiny_bundle), "--dataset", "/nonexistent"),
        ("winclip-inspect", str(tmp_path / "no-bundle"), "--source", str(tmp_path), "--out", str(tmp_path / "c")),
    ]
    for args in cases:
        proc = run_cli(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len([line for line in proc.stderr.splitlines() if line.startswith("Error")]) == 1, proc.stderr

