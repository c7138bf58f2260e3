"""The CPU-dependent int8 and `auto` tests again, on an AVX2-only CPU: QEMU's Haswell (AVX2 + FMA, no AVX-512, no VNNI).

On a VNNI host a test can inject an AVX2 CPU into the policy, but the kernels that run the engines are the
host's: whether full-range int8 weights saturate, and whether an engine's guard holds, only an AVX2 CPU
shows. QEMU's user mode runs this interpreter as one (CPUID says Haswell, and runtime/cpu.py reads CPUID as
the kernels do, while /proc/cpuinfo still shows the host), and the commands those tests start run under it
too (conftest.emulator). Emulation is slow, so only the tiny model and only the tests whose outcome depends
on the CPU. Where this host has an int8 dot product, an engine made and guarded here with full-range weights
is handed to the emulated run, which proves what happens to it on a CPU without one.
"""

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EMULATED_CPU_VARIABLE, TINY_BUNDLE_VARIABLE, emulator, line_frames, needs
from test_backend_auto import VNNI_BUNDLE_VARIABLE
from winclip.calibration.engines.build import add_engine
from winclip.runtime import cpu

# QEMU's Haswell less the features its TCG cannot emulate (each would print a warning on every start)
EMULATED_X86 = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
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
    env = {**os.environ, EMULATED_CPU_VARIABLE: EMULATED_X86, TINY_BUNDLE_VARIABLE: str(tiny_bundle)}
    made_with_vnni = cpu.current().int8_dot is not None
    if made_with_vnni:
        root = shutil.copytree(tiny_bundle, tmp_path / "vnni")
        frames = tmp_path / "frames"
        frames.mkdir()
        add_engine(root, "int8", line_frames(frames, 5))  # full-range weights, guarded on this CPU
        env[VNNI_BUNDLE_VARIABLE] = str(root)
    proc = subprocess.run([qemu, "-cpu", EMULATED_X86, sys.executable, "-m", "pytest", "-q", "-rA", "-k", SKIP,
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
