"""The CPU-dependent int8 and `auto` tests again, on an AVX2-only CPU: QEMU's Haswell (AVX2 + FMA, no AVX-512, no VNNI).

On a VNNI host a test can inject an AVX2 CPU into the policy, but the kernels that run the engines are the
host's: whether full-range int8 weights saturate, and whether an engine's guard holds, only an AVX2 CPU
shows. QEMU's user mode runs this interpreter as one (CPUID says Haswell, and runtime/cpu.py reads CPUID as
the kernels do, while /proc/cpuinfo still shows the host), and the commands those tests start run under it
too (conftest.emulator). Emulation is slow, so only the tiny model and only the tests whose outcome depends
on the CPU. Where this host has an int8 dot product, an engine made and guarded here with full-range weights
is handed to the emulated run, which proves what happens to it on a CPU without one.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EMULATED_CPU_VARIABLE, TINY_BUNDLE_VARIABLE, emulator, line_frames, needs, needs_openvino
from test_backend_auto import VNNI_BUNDLE_VARIABLE
from winclip.benchmarks.guard_emulated import HASWELL
from winclip.calibration.engines.build import add_engine
from winclip.calibration.engines.openvino_int8 import NncfSettings
from winclip.runtime import cpu

CHECKS = "tests/test_backend_auto.py"
# options and injected timings do not depend on the CPU, and their commands are slow to start emulated
SKIP = "not test_inspect_takes_the_backend and not by_default and not fastest_remembers"
ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 600  # measured: 2 min on a loaded 2-core EPYC (load 5); 6-8 min when the emulated run exported itself


@pytest.fixture(scope="module")
def qemu() -> str:
    if platform.machine().lower() not in cpu.X86_64:
        pytest.skip("QEMU's Haswell emulates an x86-64 CPU: for x86-64 hosts")
    if emulator():
        pytest.skip("this process already runs under QEMU")
    found = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if found is None:
        needs("QEMU's user-mode emulator is missing: apt-get install qemu-user-static")
    return found


def test_the_int8_and_auto_tests_pass_on_an_avx2_only_cpu(qemu, tiny_bundle, tmp_path):
    env = {**os.environ, EMULATED_CPU_VARIABLE: HASWELL, TINY_BUNDLE_VARIABLE: str(tiny_bundle)}
    made_with_vnni = cpu.current().int8_dot is not None
    if made_with_vnni:
        root = shutil.copytree(tiny_bundle, tmp_path / "vnni")
        frames = tmp_path / "frames"
        frames.mkdir()
        add_engine(root, "int8", line_frames(frames, 5))  # full-range weights, guarded on this CPU
        env[VNNI_BUNDLE_VARIABLE] = str(root)
    proc = subprocess.run([qemu, "-cpu", HASWELL, sys.executable, "-m", "pytest", "-q", "-rA", "-k", SKIP,
                           "-p", "no:cacheprovider", "--durations=4", CHECKS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMIT_S)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    passed = set(re.findall(r"^PASSED \S+::(\w+)", report, re.M))
    assert {"test_cpuid_is_what_the_kernels_see", "test_weight_range_follows_the_cpu_and_is_recorded",
            "test_auto_times_each_candidate_once_and_remembers_the_fastest",
            "test_auto_says_why_it_passed_each_engine_over"} <= passed, report[-3000:]
    if made_with_vnni:  # the VNNI engine ran on real AVX2 kernels: passed over by auto, still close when asked
        assert "test_a_vnni_engine_on_a_cpu_without_vnni_is_warned_about_and_still_correct" in passed, report[-3000:]



def _guarded_on_haswell(tiny_bundle, frames: Path, folder: Path, overflow_fix: str) -> tuple[dict, str]:
    """An OpenVINO int8 IR of the tiny bundle made here with `overflow_fix`, guarded again on an emulated Haswell
    (benchmarks/guard_emulated.py): its JSON result and printed table."""
    root = shutil.copytree(tiny_bundle, folder / "bundle")
    add_engine(root, "int8", frames, backend="openvino", settings=NncfSettings(overflow_fix=overflow_fix),
               accept_degraded=True)  # the tiny model's rank guard is noise on any CPU; its maps are the point
    proc = subprocess.run([sys.executable, "-m", "winclip.benchmarks.guard_emulated", str(root), "--images",
                           str(frames), "--out", str(folder / "emulated")],
                          cwd=ROOT, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((folder / "emulated.json").read_text())
    assert result["settings"]["overflow_fix"] == overflow_fix
    assert result["emulated"]["record"]["int8_dot"] is None and result["emulated"]["compute"] == "f32"
    assert result["guard_emulated"]["frames"] == 6 and result["guard_emulated"]["memory_frames"] == 1
    return result, proc.stdout


def test_the_openvino_int8_recipe_for_avx2_holds_its_maps_on_an_avx2_only_cpu_where_nncfs_default_does_not(
        qemu, tiny_bundle, tmp_path):
    """Where a CPU has no VNNI, winclip-quantize turns NNCF's overflow fix on for every layer (7-bit weights, whose
    u8 x s8 pairs cannot overflow a 16-bit sum). Made here and run on an emulated Haswell's int8 kernels, that IR
    keeps the guard's maps and embeddings as it does here; the same model with NNCF's default (the fix on the
    first layer only) saturates there: the reason for the recipe."""
    needs_openvino()
    frames = tmp_path / "frames"
    frames.mkdir()
    line_frames(frames, 8)  # 6 held out, 1 for the memory, 8 to calibrate NNCF on, 1 spare
    results = {}
    for fix in ("enable", "first_layer_only"):
        (tmp_path / fix).mkdir()
        results[fix], printed = _guarded_on_haswell(tiny_bundle, frames, tmp_path / fix, fix)
        assert "| emulated Haswell |" in printed and "(recorded when made)" in printed
    limits = results["enable"]["limits"]

    def worst(result: dict) -> tuple[float, float]:
        guarded = result["guard_emulated"]
        return (min(guarded["embedding_cosine_min"].values()),
                min(mode["map_pearson_min"] for mode in guarded["modes"].values()))

    cosine, pearson = worst(results["enable"])
    assert cosine >= limits["embedding_cosine_min"] and pearson >= limits["map_pearson_min"], results["enable"]
    assert results["enable"]["guard_emulated"]["modes"]["zero-shot"]["map_pearson_median"] >= 0.99
    cosine, _ = worst(results["first_layer_only"])
    assert cosine < limits["embedding_cosine_min"], results["first_layer_only"]  # saturated: the guard refuses it
    # the same IR answers on the two CPUs alike with the fix, and far apart without it
    apart = {fix: max(d["relative"] for d in r["emulated_vs_here"].values()) for fix, r in results.items()}
    assert apart["enable"] < 0.05 < apart["first_layer_only"], apart
