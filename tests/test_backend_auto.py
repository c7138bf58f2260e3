"""ISA-aware int8 and `--backend auto`: the CPU decides the weight range, auto measures once and remembers.

The policy's CPU is injected (`winclip.runtime.cpu.current`); an engine is made and guarded on the CPU the
test really runs on, whose kernels decide whether its guard holds, so what depends on that CPU is derived from
it. tests/test_emulated_x86.py runs this file again under QEMU's AVX2-only CPU.
"""

import json
from dataclasses import replace
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import emulator, import_blocker, line_frames, needs_openvino, run_cli
from winclip.calibration.engines.build import add_engine
from winclip.calibration.engines.int8 import Int8Settings, for_this_cpu
from winclip.runtime import Detector, backends, cpu, cpuid
from winclip.runtime.backends import BackendOptions, auto
from winclip.runtime.bundle import Bundle
from winclip.runtime.cache import cache_path

VNNI_BOX = """processor : 0
model name : Test EPYC with VNNI
flags : fpu sse2 avx2 fma avx512f avx512_vnni avx_vnni avx512_bf16
"""
AVX2_BOX = """processor : 0
model name : Test EPYC, AVX2 only
flags : fpu sse2 avx2 fma
"""
# a bundle with a full-range int8 engine made on a VNNI host, handed to this file's run under QEMU
VNNI_BUNDLE_VARIABLE = "WINCLIP_VNNI_BUNDLE"
ARM_BOX = """processor : 0
BogoMIPS : 50.00
Features : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer : 0x41
"""


def as_cpu(monkeypatch, text, machine="x86_64"):
    info = cpu.parse_cpuinfo(text, machine)
    monkeypatch.setattr(cpu, "current", lambda: info)
    return info


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return line_frames(tmp_path_factory.mktemp("auto-line"), 5)


def test_cpuinfo_is_read_for_int8_dot_product_and_bf16():
    vnni, avx2, arm = (cpu.parse_cpuinfo(t, m) for t, m in ((VNNI_BOX, "x86_64"), (AVX2_BOX, "x86_64"),
                                                             (ARM_BOX, "aarch64")))
    assert vnni.int8_dot == "avx512_vnni" and vnni.bf16 and vnni.model == "Test EPYC with VNNI"
    assert avx2.int8_dot is None and not avx2.bf16 and avx2.reported_flags == ["avx2", "fma"]
    assert arm.int8_dot == "asimddp" and "asimddp" in arm.describe()
    assert cpu.parse_cpuinfo("flags : avx2 avx_vnni\n").int8_dot == "avx_vnni"
    # the class of CPU a speed belongs to, first in winclip-bench's report
    assert vnni.headline() == "CPU: Test EPYC with VNNI, x86-64 AVX-512 VNNI BF16"
    assert avx2.isa_class == "x86-64 AVX2 only"
    assert cpu.parse_cpuinfo("flags : avx2 fma avx_vnni\n", "x86_64").isa_class == "x86-64 AVX2 + AVX-VNNI"
    assert cpu.parse_cpuinfo("flags : avx2 avx512f\n", "x86_64").isa_class == "x86-64 AVX-512"
    assert cpu.current().machine  # the real machine reads without error


def test_cpuid_is_what_the_kernels_see():
    if platform.machine().lower() not in cpu.X86_64:
        pytest.skip("CPUID is an x86-64 instruction")
    read = cpuid.read()
    if read is None:
        pytest.skip("this kernel refuses executable memory: /proc/cpuinfo is read instead")
    brand, flags = read
    kernel = cpu.parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert flags <= kernel.flags and "avx2" in flags  # an emulated CPU has a subset of the host's features
    if emulator():  # QEMU's Haswell: /proc/cpuinfo is the host's, the kernels see AVX2 only, and so do we
        assert not flags & {"avx512f", "avx512_vnni", "avx_vnni"} and cpu.current().int8_dot is None
    else:
        assert flags == kernel.flags & set(cpuid.FEATURE_BITS.values()) and brand == kernel.model
    assert cpu.current().flags == flags


def test_weight_range_follows_the_cpu_and_is_recorded(tiny_bundle, frames, tmp_path, monkeypatch):
    vnni, avx2 = cpu.parse_cpuinfo(VNNI_BOX, "x86_64"), cpu.parse_cpuinfo(AVX2_BOX, "x86_64")
    assert for_this_cpu(Int8Settings(), vnni).reduce_range is False  # full-range: exact and faster with VNNI
    assert for_this_cpu(Int8Settings(), avx2).reduce_range is True  # 7-bit: AVX2 kernels saturate on 8-bit
    assert for_this_cpu(Int8Settings(reduce_range=True), vnni).reduce_range is True  # asked for: kept
    # made and guarded on the CPU this test runs on (natively, and under QEMU's AVX2-only Haswell)
    real = cpu.current()
    made = add_engine(shutil.copytree(tiny_bundle, tmp_path / "real"), "int8", frames)
    assert made.made_by["settings"]["reduce_range"] is (real.int8_dot is None) and made.made_by["cpu"] == real.record()
    as_cpu(monkeypatch, VNNI_BOX)  # the record names the CPU it was made on (7-bit weights: exact on any CPU)
    forced = add_engine(shutil.copytree(tiny_bundle, tmp_path / "forced"), "int8", frames,
                        settings=Int8Settings(reduce_range=True))
    assert forced.made_by["settings"]["reduce_range"] is True
    assert forced.made_by["cpu"] == {"model": "Test EPYC with VNNI", "machine": "x86_64", "int8_dot": "avx512_vnni",
                                     "flags": ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"]}
    # full-range asked for on the command line (the real CPU): guarded with VNNI, saturated without it
    proc = run_cli("winclip-quantize", str(tmp_path / "forced"), "--precision", "int8", "--images", str(frames),
                   "--full-range", "--force")
    if real.int8_dot:
        assert proc.returncode == 0, proc.stderr
        assert Bundle.load(tmp_path / "forced").manifest.engine("int8").made_by["settings"]["reduce_range"] is False
    else:
        assert proc.returncode != 0 and "failed its accuracy guard" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def vnni_bundle(tiny_bundle, frames, tmp_path_factory):
    """The tiny bundle with a full-range int8 engine made and guarded on a CPU with an int8 dot product: made
    here on such a CPU, or handed over by the process that runs this file under QEMU's AVX2-only CPU."""
    handed = os.environ.get(VNNI_BUNDLE_VARIABLE)
    if handed:
        return Path(handed)
    if cpu.current().int8_dot is None:
        pytest.skip("full-range int8 weights pass their guard only on a CPU with an int8 dot product (VNNI)")
    root = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("vnni") / "bundle")
    add_engine(root, "int8", frames)
    return root


def test_a_vnni_engine_on_a_cpu_without_vnni_is_warned_about_and_still_correct(vnni_bundle, monkeypatch, caplog):
    made_with = Bundle.load(vnni_bundle).manifest.engine("int8").made_by["cpu"]["int8_dot"]
    frame = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    fp32 = Detector.from_bundle(vnni_bundle, object="bottle", precision="fp32", cache=False)(frame)[0]
    if cpu.current().int8_dot:
        with caplog.at_level(logging.WARNING):
            on_vnni = Detector.from_bundle(vnni_bundle, object="bottle", cache=False)
        assert on_vnni.engine.precision == "int8" and "VNNI" not in caplog.text
        as_cpu(monkeypatch, AVX2_BOX)  # the policy, on an injected CPU; its kernels run for real under QEMU
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        det = Detector.from_bundle(vnni_bundle, object="bottle", cache=False)
    assert det.engine.precision == "fp32"  # auto passes over an engine whose guard does not hold here
    assert f"made on a CPU with {made_with}" in caplog.text and "auto passes it over" in caplog.text
    assert det(frame)[0].image_score == fp32.image_score
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        asked = Detector.from_bundle(vnni_bundle, object="bottle", precision="int8", cache=False)
    assert asked.engine.precision == "int8" and "running it as asked" in caplog.text
    assert abs(asked(frame)[0].image_score - fp32.image_score) < 0.05


def test_auto_times_each_candidate_once_and_remembers_the_fastest(tiny_bundle, frames, tmp_path, monkeypatch,
                                                                 caplog):
    needs_openvino()
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    add_engine(copy, "int8", frames)  # made and guarded for the real CPU, whose kernels run it
    as_cpu(monkeypatch, VNNI_BOX)
    # real timings on a shared (or emulated) CPU jitter: the measuring-again on a slow-down has its own test
    monkeypatch.setattr(auto, "SLOWER_THAN_RECORDED", float("inf"))
    cache = tmp_path / "cache"
    measured = []
    real_measure = auto.measure
    monkeypatch.setattr(auto, "measure", lambda opened, batch, start: measured.append(
        sorted(b.name for b in opened.values())) or real_measure(opened, batch, start))
    with caplog.at_level(logging.INFO):
        det = Detector.from_bundle(copy, object="bottle", backend="auto", cache_dir=cache)
    # fp32 is not a candidate where a guarded int8 exists; the ONNX int8 engine runs on both backends
    assert measured == [["onnxruntime", "openvino"]] and det.engine.precision == "int8"
    assert "the fastest of 2 measured on this machine" in det.backend.reason and "timing 2 engines" in caplog.text
    remembered = json.loads(next(cache.glob("auto-*.json")).read_text())
    assert remembered["backend"] == det.backend.name and remembered["engine_sha256"] == det.engine.sha256
    assert set(remembered["seconds"]) == {"onnxruntime int8", "openvino int8"}
    measured.clear()
    again = Detector.from_bundle(copy, object="bottle", backend="auto", cache_dir=cache)
    assert measured == [] and again.backend.name == det.backend.name and "when measured" in again.backend.reason
    frame = np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    assert np.isfinite(again(frame)[0].image_score)
    as_cpu(monkeypatch, VNNI_BOX.replace("avx512_bf16", "amx_int8"))  # another CPU: measured again
    Detector.from_bundle(copy, object="bottle", backend="auto", cache_dir=cache)
    assert len(measured) == 1 and len(list(cache.glob("auto-*.json"))) == 2
    measured.clear()  # --precision still forces a choice: fp32 on both backends
    forced = Detector.from_bundle(copy, object="bottle", backend="auto", precision="fp32", cache_dir=cache)
    assert forced.engine.precision == "fp32" and measured == [["onnxruntime", "openvino"]]


def test_auto_runs_the_fastest_remembers_it_under_its_key_and_measures_again_when_it_slows(
        tiny_bundle, frames, tmp_path, monkeypatch, caplog):
    needs_openvino()
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    add_engine(copy, "int8", frames)
    speed = {}  # seconds per call, injected by backend
    calls = []
    monkeypatch.setattr(auto, "time_call", lambda backend, batch: calls.append(backend.name) or speed[backend.name])

    def open_auto(cache, **kwargs):
        calls.clear()
        with caplog.at_level(logging.INFO):
            return Detector.from_bundle(copy, object="bottle", backend="auto", cache_dir=cache, **kwargs).backend

    def record(cache):
        found, _ = auto.candidates(Bundle.load(copy), BackendOptions(cache_dir=cache))
        key = auto.choice_key(found, BackendOptions(cache_dir=cache))  # the key the module's docstring names
        return json.loads(cache_path(f"auto-{key}.json", cache).read_text())

    for fast, slow in (("openvino", "onnxruntime"), ("onnxruntime", "openvino")):
        cache = tmp_path / f"cache-{fast}"
        speed.update({fast: 0.010, slow: 0.030})
        chosen = open_auto(cache)
        assert chosen.name == fast and f"{fast} int8 10.0 ms, {slow} int8 30.0 ms" in chosen.reason
        rounds = len(calls) // 2  # interleaved rounds: one call of each per round, so load hits both alike
        assert calls == calls[:2] * rounds and set(calls) == {fast, slow} and auto.MIN_ROUNDS <= rounds <= auto.ROUNDS
        kept = record(cache)
        assert kept["backend"] == fast and kept["seconds"] == {f"{fast} int8": 0.01, f"{slow} int8": 0.03}
        assert "load_average" in kept and kept["engine_sha256"] == chosen.engine.sha256
    speed.update({"onnxruntime": 0.015})  # a little slower than recorded: the choice stands, one call checks it
    assert open_auto(cache).name == "onnxruntime" and calls == ["onnxruntime"]
    speed.update({"onnxruntime": 0.050})  # 5x slower than recorded: measured again, and openvino wins now
    caplog.clear()
    assert open_auto(cache).name == "openvino" and "measuring again" in caplog.text
    assert record(cache)["seconds"] == {"openvino int8": 0.03, "onnxruntime int8": 0.05}
    speed.update({"onnxruntime": 0.001})  # --remeasure: measured although the remembered one is as fast as ever
    assert open_auto(cache, remeasure=True).name == "onnxruntime" and calls.count("openvino") >= auto.MIN_ROUNDS
    # the precision asked for only narrows the candidates: asking for the int8 engine by name (as a line profile
    # made on it does) finds the choice that --precision auto measured between the same engines
    assert open_auto(cache, precision="int8").name == "onnxruntime" and calls == ["onnxruntime"]


def test_auto_says_why_it_passed_each_engine_over(tiny_bundle, frames, tmp_path, monkeypatch):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    made = add_engine(copy, "int8", frames)
    monkeypatch.setitem(backends.BACKENDS, "openvino",  # a box without it
                        replace(backends.BACKENDS["openvino"], path="winclip_not_installed:Backend"))
    manifest = json.loads((copy / "manifest.json").read_text())
    int8 = next(e for e in manifest["engines"] if e["precision"] == "int8")
    for edit, why in ((lambda e: e["made_by"].update(tool="somebody"), "not vouched for"),
                      (lambda e: e["guard"].update(passed=False, failures=["x < 0.98"]), "failed its guard")):
        entry = json.loads(json.dumps(int8))
        edit(entry)
        (copy / "manifest.json").write_text(json.dumps({**manifest, "engines": [
            entry if e["precision"] == "int8" else e for e in manifest["engines"]]}))
        det = Detector.from_bundle(copy, object="bottle", backend="auto", cache=False)
        assert det.engine.precision == "fp32" and "openvino: library missing" in det.backend.reason
        assert f"onnxruntime int8: {why}" in det.backend.reason, det.backend.reason
    if made.made_by["settings"]["reduce_range"] is False:  # full-range weights: wrong on a CPU without VNNI
        (copy / "manifest.json").write_text(json.dumps(manifest))
        as_cpu(monkeypatch, AVX2_BOX)
        det = Detector.from_bundle(copy, object="bottle", backend="auto", cache=False)
        assert "onnxruntime int8: wrong ISA" in det.backend.reason and det.engine.precision == "fp32"


def test_auto_with_one_candidate_does_not_measure(tiny_bundle, monkeypatch, tmp_path):
    monkeypatch.setitem(backends.BACKENDS, "openvino", replace(backends.BACKENDS["openvino"], measured=False))
    monkeypatch.setattr(auto, "measure", lambda *args: pytest.fail("measured a single candidate"))
    det = Detector.from_bundle(tiny_bundle, object="bottle", backend="auto", cache_dir=tmp_path)
    assert det.backend.name == "onnxruntime" and "the only candidate here" in det.backend.reason
    assert not list(tmp_path.glob("auto-*.json"))


def test_commands_run_auto_by_default_where_two_local_backends_are_installed(tiny_bundle, frames, tmp_path):
    needs_openvino()
    assert backends.default_backend() == "auto"
    common = (str(tiny_bundle), "--source", str(frames), "--object", "bottle")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_cli("winclip-inspect", *common, "--out", str(tmp_path / "auto"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "auto: the fastest of 2 measured on this machine" in proc.stderr and "timing 2 engines" in proc.stderr
    for command in ("winclip-inspect", "winclip-calibrate", "winclip-bench", "winclip-serve"):
        shown = run_cli(command, "--help").stdout
        assert "--remeasure" in shown and "auto where ONNX Runtime and OpenVINO are both" in " ".join(shown.split())
    assert "--remeasure" in run_cli("winclip-eval", "run", "--help").stdout
    # a box with ONNX Runtime alone: onnxruntime, nothing measured
    blocked = import_blocker(("openvino",)) + "from winclip.runtime.line.cli import main\nmain()\n"
    alone = subprocess.run([*emulator(), sys.executable, "-c", blocked, *common, "--out", str(tmp_path / "alone")],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert alone.returncode == 0, alone.stderr
    assert "on onnxruntime CPU" in alone.stderr and "measured" not in alone.stderr and "timing" not in alone.stderr


def test_inspect_takes_the_backend_and_device_from_the_command_line(tiny_bundle, frames, tmp_path):
    needs_openvino()
    common = ("--source", str(frames), "--object", "bottle")
    proc = run_cli("winclip-inspect", str(tiny_bundle), *common, "--out", str(tmp_path / "ov"),
                   "--backend", "openvino", "--device", "CPU")
    assert proc.returncode == 0, proc.stderr
    assert "on openvino CPU" in proc.stderr and len((tmp_path / "ov" / "events.jsonl").read_text().splitlines()) == 10
    proc = run_cli("winclip-inspect", str(tiny_bundle), *common, "--out", str(tmp_path / "tpu"),
                   "--backend", "openvino", "--device", "TPU")
    assert proc.returncode != 0 and "OpenVINO has no device 'TPU' here; it has: CPU" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("winclip-inspect", str(tiny_bundle), *common, "--out", str(tmp_path / "auto"), "--backend", "auto",
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "auto: the fastest of 2 measured on this machine" in proc.stderr  # fp32 on each backend
