"""Hostile input, round 3 (issue 29): the last findings of the hostile corpus, each shut for its whole class.

- a data set's CSV that names an absolute path outside it is skipped, said so, never read;
- an event log on a disk that fills (RLIMIT_FSIZE) ends with whole lines, never a cut one;
- a line profile whose memory is huge but consistent is refused from its record and the .npy headers;
- the Python API raises the WinclipError family (an empty object name, a profile folder we may not look into);
- quantize cleans what a kill -9 while writing the manifest left, at the very start of its next run;
- a served engine is accepted only when the server's versions name one of this bundle's engines.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import textile_images
from winclip.runtime import Detector
from winclip.runtime.errors import BundleError, WinclipError


# ---- 1. an absolute path in a VisA CSV, through the whole command
def test_an_absolute_path_in_a_visa_csv_is_never_scored(tiny_bundle, tmp_path):
    from conftest import run_cli

    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    cv2.imwrite(str(secret), np.full((32, 32, 3), 255, np.uint8))
    root = tmp_path / "visa"
    (root / "split_csv").mkdir(parents=True)
    (root / "img").mkdir()
    rows = ["object,split,label,image,mask",
            f"bottle,test,normal,{secret},",  # absolute, outside
            f"bottle,test,anomaly,{secret},{secret}",
            f"bottle,train,normal,{secret},",
            f"bottle,test,normal,{root / 'img' / '..' / '..' / 'elsewhere' / 'secret.png'},"]  # absolute, climbing out
    for i, path in enumerate(textile_images("nominal", 2) + textile_images("local", 2)):
        shutil.copy(path, root / "img" / f"{i}.png")
        mask = np.zeros(cv2.imread(str(path)).shape[:2], np.uint8)
        mask[:8, :8] = 255
        cv2.imwrite(str(root / "img" / f"m{i}.png"), mask)
        rows.append(f"bottle,test,{'normal' if i < 2 else 'anomaly'},img/{i}.png,{'' if i < 2 else f'img/m{i}.png'}")
    rows.append(f"bottle,test,normal,{root / 'img' / '0.png'},")  # absolute but inside: that one is fine
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    proc = run_cli("winclip-eval", str(tiny_bundle), "--dataset", str(root), "--shots", "0",
                   "--out", str(tmp_path / "eval"), "--save-scores")
    assert proc.returncode == 0, proc.stderr
    (category,) = json.loads((tmp_path / "eval" / "results.json").read_text())["categories"]
    assert sum("leads outside the data set" in line for line in category["skipped_images"]) == 4
    scored = (tmp_path / "eval" / "scores" / "bottle" / "images.csv").read_text().splitlines()[1:]
    assert len(scored) == 5 and not any("secret" in line or "elsewhere" in line for line in scored), scored


# ---- 2. a disk that fills under an event log
WRITER = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from winclip.runtime.line.events import EventLog
    from winclip.runtime.line.sinks.event_log import RotatingEventLog
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    log = RotatingEventLog(Path(sys.argv[1]) / "live.jsonl") if sys.argv[3] == "live" else \\
        EventLog(Path(sys.argv[1]) / "events.jsonl")
    for i in range(10_000):
        try:
            log.write({"frame": i, "source": "cam-" + "x" * (i % 97), "image_score": 0.5})
        except OSError as exc:
            print("stopped", i, exc.errno)
            break
""")


@pytest.mark.parametrize("kind", ["live", "folder"])
def test_an_event_log_on_a_full_disk_ends_with_a_whole_line(tmp_path, kind):
    limit = 3000  # bytes: a line of ~60-160 bytes is cut by it unless the writer takes its part back
    proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), str(limit), kind], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "stopped" in proc.stdout, proc.stdout + proc.stderr
    (log,) = [p for p in tmp_path.iterdir() if ".jsonl" in p.name]
    data = log.read_bytes()
    assert data and len(data) <= limit and data.endswith(b"\n"), data[-80:]
    frames = [json.loads(line)["frame"] for line in data.decode().splitlines()]
    assert frames == list(range(len(frames))) and len(frames) == int(proc.stdout.split()[1])


# ---- 3. a huge, consistent memory in a line profile
def _profile(tiny_bundle, folder: Path) -> Path:
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=0.5, pixel_threshold=0.5)
    det.build_memory([cv2.imread(str(p)) for p in textile_images("nominal", 2)])
    return det.to_profile().save(folder)


def _sparse_npy(path: Path, shape: tuple[int, int]) -> None:
    """A float32 .npy of this shape, as a sparse file: huge on paper, nothing on the disk."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.truncate(fh.tell() + shape[0] * shape[1] * 4)


def test_a_memory_larger_than_calibrate_can_make_is_refused_before_a_byte_is_read(tiny_bundle, tmp_path,
                                                                                  monkeypatch):
    from winclip.runtime import memory
    from winclip.runtime.defaults import MAX_MEMORY_BYTES, MEMORY_MAX_SHOTS
    from winclip.runtime.profiles.profile import LineProfile, ProfileError

    root = _profile(tiny_bundle, tmp_path / "profile")
    record = json.loads((root / "profile.json").read_text())
    arrays = record["memory"]["arrays"]
    # every array 80 MB and consistent with its record: each under the old per-array cap, all together over
    for part, entry in arrays.items():
        width = entry["shape"][1]
        rows = (80 << 20) // (4 * width) // 2 * 2
        _sparse_npy(root / entry["file"], (rows, width))
        entry["shape"] = [rows, width]
        entry["sha256"] = hashlib.sha256((root / entry["file"]).read_bytes()).hexdigest()
    (root / "profile.json").write_text(json.dumps(record))
    read = []
    real = memory.read_checked
    monkeypatch.setattr(memory, "read_checked", lambda *a, **k: read.append(a) or real(*a, **k))
    with pytest.raises(ProfileError, match=f"more than the {MAX_MEMORY_BYTES:,} a memory may have"):
        LineProfile.load(root)
    assert not read
    assert MAX_MEMORY_BYTES == MEMORY_MAX_SHOTS * (10 << 20)  # stated in defaults.py: 16 images of <= 10 MB


def test_a_memory_file_larger_than_its_record_is_refused_from_its_header(tiny_bundle, tmp_path, monkeypatch):
    from winclip.runtime import memory
    from winclip.runtime.profiles.profile import LineProfile, ProfileError

    root = _profile(tiny_bundle, tmp_path / "profile")
    record = json.loads((root / "profile.json").read_text())
    entry = record["memory"]["arrays"]["patches"]
    _sparse_npy(root / entry["file"], (entry["shape"][0] * 1000, entry["shape"][1]))  # the record stays small
    read = []
    real = memory.read_checked
    monkeypatch.setattr(memory, "read_checked", lambda *a, **k: read.append(a) or real(*a, **k))
    with pytest.raises(ProfileError, match="declares shape .* the record says"):
        LineProfile.load(root)
    assert [a[1] for a in read] == [e["file"] for p, e in record["memory"]["arrays"].items() if p != "patches"]


def test_calibrate_never_makes_a_memory_a_box_would_refuse(tiny_bundle, tmp_path):
    from conftest import run_cli
    from winclip.runtime.defaults import MEMORY_MAX_SHOTS

    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--normal", str(tmp_path),
                   "--shots", str(MEMORY_MAX_SHOTS + 1), "--out", str(tmp_path / "p"))
    assert proc.returncode == 2 and f"{MEMORY_MAX_SHOTS + 1} is not in the range" in proc.stderr, proc.stderr


# ---- 4. the API's errors are ours
@pytest.mark.parametrize("name", ["", "   ", "_", " _ _ "])
def test_an_empty_object_name_is_our_error(tiny_bundle, name):
    from winclip.runtime.errors import SettingError

    with pytest.raises(SettingError, match="object name is empty"):
        Detector.from_bundle(tiny_bundle, object=name, provider="cpu")


def test_a_profile_folder_we_may_not_look_into_is_our_error(tiny_bundle, tmp_path, monkeypatch):
    from winclip.runtime.profiles.profile import LineProfile
    from winclip.runtime.profiles.versions import ProfileStore

    root = _profile(tiny_bundle, tmp_path / "profile")
    real_stat, real_lstat = os.stat, os.lstat

    def denied(real):
        def call(path, *args, **kwargs):
            if os.fspath(path).endswith("versions.json"):  # root may look anywhere: the OS's refusal, simulated
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", denied(real_stat))
    monkeypatch.setattr(os, "lstat", denied(real_lstat))
    for call in (lambda: LineProfile.load(root), lambda: ProfileStore(root).history(),
                 lambda: Detector.from_bundle(tiny_bundle, profile=root, provider="cpu")):
        with pytest.raises(WinclipError, match="Permission denied"):
            call()


# ---- 5. quantize after a kill -9 while the manifest was written
def test_quantize_cleans_a_killed_writes_leftovers_even_when_it_stops_early(tiny_bundle_copy, tmp_path, caplog):
    from winclip.calibration.engines.build import QuantizeError, add_engine

    (tiny_bundle_copy / "visual-int8-0123456789ab.onnx").write_bytes(b"an engine the manifest never named")
    (tiny_bundle_copy / ".tmp-k9x2.part").write_bytes(b'{"half a manifest')
    with pytest.raises(QuantizeError, match="at least 2 held-out frames"):  # refused before any work
        add_engine(tiny_bundle_copy, "int8", tmp_path, holdout=1)
    names = {p.name for p in tiny_bundle_copy.iterdir()}
    assert "visual-int8-0123456789ab.onnx" not in names and ".tmp-k9x2.part" not in names
    (line,) = [r.getMessage() for r in caplog.records if "leftover" in r.getMessage()]
    assert "removed 2 leftover(s) of an interrupted write" in line and "visual-int8-0123456789ab.onnx" in line
    from winclip.runtime.bundle import Bundle

    Bundle.load(tiny_bundle_copy)  # still whole


# ---- served-engine identity: the choice, by value
def test_a_served_engine_is_chosen_only_when_its_version_names_an_engine_of_this_bundle(tiny_bundle):
    from winclip.runtime.backends.triton import ServedModel, choose_served_engine
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.served import ServedAddress, served_version

    manifest = Bundle.load(tiny_bundle).manifest
    (fp32,) = manifest.engines
    address = ServedAddress.parse("triton://edge.local:8001/winclip")
    ours = served_version(fp32.sha256)

    def served(versions, sha256=None):
        return ServedModel(tuple(versions), 8, sha256, "triton test")

    engine, why = choose_served_engine(address, manifest, served([ours]), "auto")
    assert engine is fp32 and str(ours) in why
    assert choose_served_engine(address, manifest, served([ours - 1, ours, ours + 1]), "fp32")[0] is fp32
    # the same server, the same everything, but versions that are not this bundle's: refused, saying so
    for versions in ([ours + 1], [ours - 1, 1], [int(fp32.sha256[:14], 16)], []):
        with pytest.raises(BundleError, match="no engine of this bundle"):
            choose_served_engine(address, manifest, served(versions), "auto")
    # a config that carries the whole sha256: the version alone is not enough
    other = hashlib.sha256(b"another engine").hexdigest()
    with pytest.raises(BundleError, match="no engine of this bundle"):
        choose_served_engine(address, manifest, served([ours], sha256=other), "auto")
    assert choose_served_engine(address, manifest, served([ours], sha256=fp32.sha256), "auto")[0] is fp32
    with pytest.raises(BundleError, match="not the int8 engine asked for"):
        choose_served_engine(address, manifest, served([ours]), "int8")
