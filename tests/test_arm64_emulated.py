"""ARM64 (aarch64): the runtime of this tree run by an aarch64 CPython under QEMU user-mode emulation.

`.ci/arm64-sysroot.sh` builds the aarch64 side: Debian's arm64 python3.11, the runtime's aarch64 wheels
(onnxruntime, numpy, OpenCV, onnx for winclip-quantize) and links to this tree, run by
`qemu-aarch64-static -cpu cortex-a76` (a Raspberry Pi 5's core; never QEMU 7.2's default `max`, whose SVE gives
wrong int8 sums). A tiny bundle exported here on x86 is scored there and here; an int8 engine is made and guarded
there, by winclip-quantize itself. Emulation is about 100-300x slower on the kernels: tiny model, few frames.

Without qemu-aarch64-static, or where the sysroot cannot be built, these tests skip here and fail under CI
(`CI` or `WINCLIP_REQUIRE_ARM64` set), as the browser and serving tests do. The first tests need no emulation:
they parse injected HWCAP bits and /proc/cpuinfo texts on any machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import line_frames
from winclip.calibration.engines.int8 import Int8Settings, for_this_cpu, weight_range
from winclip.runtime import cpu
from winclip.runtime.backends.policy import isa_problem
from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import Engine

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "arm64-sysroot.sh"
CACHE = Path(os.environ.get("WINCLIP_ARM64_CACHE") or ROOT / ".ci-work" / "arm64")
REQUIRED = bool(os.environ.get("CI") or os.environ.get("WINCLIP_REQUIRE_ARM64"))
TARGET_CPU = "cortex-a76"  # Raspberry Pi 5; Jetson Orin's Cortex-A78AE has the same int8 features (asimddp)

# A Raspberry Pi 5 and a Jetson AGX Orin as their kernels print /proc/cpuinfo (one core each)
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1
"""
ORIN = PI5.replace("0xd0b", "0xd42").replace("0x4\n", "0x1\n")
HWCAP_A76 = 1 << 1 | 1 << 10 | 1 << 20  # asimd, asimdhp, asimddp (and bits we do not name: fp, aes, ...)
HWCAP_V1 = HWCAP_A76 | 1 << 22  # Neoverse-V1 (Graviton3): + sve
HWCAP2_V1 = 1 << 1 | 1 << 13 | 1 << 14  # + sve2, i8mm, bf16


def test_arm_features_come_from_hwcap_and_the_core_is_named():
    pi5 = cpu.arm_cpu(PI5, (HWCAP_A76 | 1, 0))
    assert pi5.describe() == "Cortex-A76 (aarch64; asimd asimddp)" and pi5.int8_dot == "asimddp" and not pi5.bf16
    assert cpu.arm_cpu(ORIN, (HWCAP_A76, 0)).model == "Cortex-A78AE"
    graviton3 = cpu.arm_cpu(PI5.replace("0xd0b", "0xd40"), (HWCAP_V1, HWCAP2_V1))
    assert graviton3.describe() == "Neoverse-V1 (aarch64; asimd asimddp i8mm sve bf16)" and graviton3.bf16
    # the kernel's HWCAP wins over a Features line (QEMU shows one file whatever CPU it emulates)
    assert "asimddp" not in cpu.arm_cpu(PI5, (1 << 1, 0)).flags
    # without getauxval the Features line; an unknown core by its numbers
    assert cpu.arm_cpu(PI5, None).reported_flags == ["asimd", "asimddp"]
    other = cpu.arm_cpu(PI5.replace("0x41", "0x61").replace("0xd0b", "0x22"), (1 << 1, 0))
    assert other.model == "ARM CPU (implementer 0x61, part 0x22)"
    assert cpu.arm_cpu("", None).describe() == "unknown CPU (aarch64; no SIMD flags known)"
    assert cpu.arm_features(0, 0) == frozenset()


def test_arm_int8_engines_get_full_range_weights_and_say_why():
    a72 = cpu.arm_cpu(PI5.replace("0xd0b", "0xd08"), (1 << 1, 0))  # Raspberry Pi 4: no dot product
    a76 = cpu.arm_cpu(PI5, (HWCAP_A76, 0))
    avx2 = cpu.parse_cpuinfo("model name : AVX2 box\nflags : avx2 fma\n", "x86_64")
    for arm in (a72, a76):
        assert for_this_cpu(Int8Settings(), arm).reduce_range is False
        recorded = weight_range(Int8Settings(), arm)
        assert recorded["weight_range"] == "full-range" and recorded["weight_range_why"].startswith("aarch64: ")
    assert weight_range(Int8Settings(), avx2)["weight_range"] == "7-bit"
    assert weight_range(Int8Settings(reduce_range=True), a76) == {"weight_range": "7-bit", "weight_range_why":
                                                                  "asked for (--reduce-range / --full-range)"}

    def engine(made_on: cpu.CpuInfo) -> Engine:
        return Engine("visual-int8.onnx", "int8", "0" * 64, {"tool": "winclip-quantize", "cpu": made_on.record(),
                                                             "settings": {"reduce_range": False}})

    # full-range weights from an ARM box hold on any ARM core and on x86 with VNNI, not on AVX2 alone
    assert isa_problem(engine(a72), a76) is None and isa_problem(engine(a76), a72) is None
    assert "made on a CPU with asimddp" in isa_problem(engine(a76), avx2)
    assert "made on a CPU with aarch64" in isa_problem(engine(a72), avx2)
    vnni = cpu.parse_cpuinfo("flags : avx2 avx512_vnni\n", "x86_64")
    assert isa_problem(engine(a76), vnni) is None and isa_problem(engine(vnni), a72) is None


# ---- under emulation

def _unavailable(why: str):
    if REQUIRED:
        pytest.fail(f"CI must run the ARM64 emulation tests: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def arm_python() -> Path:
    """The emulated aarch64 python (CACHE/python), the sysroot made or reused by .ci/arm64-sysroot.sh."""
    if shutil.which("qemu-aarch64-static") is None:
        _unavailable("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")
    t0 = time.perf_counter()
    proc = _prepare(CACHE)
    if proc.returncode != 0:
        _unavailable((proc.stderr.strip().splitlines() or ["the script failed"])[-1])
    print(f"arm64 sysroot ready in {time.perf_counter() - t0:.1f} s")
    return Path(proc.stdout.strip().splitlines()[-1])


def _prepare(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(cache)], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHON": sys.executable})


def test_the_sysroot_is_reused_and_leaves_the_hosts_apt_alone(arm_python):
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout
    t0 = time.perf_counter()
    again = _prepare(CACHE)
    assert again.returncode == 0 and Path(again.stdout.split()[-1]) == arm_python, again.stderr
    assert "downloading" not in again.stderr  # every step reused its result
    assert subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout == foreign
    print(f"sysroot reused in {time.perf_counter() - t0:.1f} s")


def test_a_sysroot_that_cannot_be_made_is_one_line():
    proc = _prepare(Path("/proc/winclip-no-such-folder"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "arm64-sysroot: cannot write the cache folder /proc/winclip-no-such-folder"


@pytest.mark.parametrize("ci", [True, False], ids=["under CI", "elsewhere"])
def test_an_unavailable_emulator_fails_under_ci_and_skips_elsewhere(ci, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "WINCLIP_REQUIRE_ARM64")}
    env.update({"WINCLIP_ARM64_CACHE": "/proc/winclip-no-such-folder", **({"CI": "true"} if ci else {})})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-k", "winclip_bench_names_it"], capture_output=True, text=True, env=env, cwd=tmp_path)
    why = ("arm64-sysroot: cannot write the cache folder /proc/winclip-no-such-folder"
           if shutil.which("qemu-aarch64-static") else "qemu-aarch64-static is not installed")
    if ci:
        assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout[-2000:]
        assert f"CI must run the ARM64 emulation tests: {why}" in proc.stdout
    else:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout and why in proc.stdout, proc.stdout[-2000:]


def emulated(arm_python: Path, *args: str, arm_cpu: str = TARGET_CPU, timeout: float = 900) -> str:
    """Run the aarch64 python with `args` as that CPU; its stdout and stderr. A failure is the test's."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(arm_python), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ARM64_CPU": arm_cpu})
    assert proc.returncode == 0, f"emulated aarch64 run failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    print(f"emulated {arm_cpu}: {' '.join(args)[:60]!r}... {time.perf_counter() - t0:.1f} s")
    return proc.stdout + proc.stderr


DESCRIBE = """
import json, platform, sys
from winclip.runtime import cpu
this = cpu.current()
seen = {"machine": platform.machine(), "describe": this.describe(), "flags": sorted(this.flags)}
if sys.argv[1:] == ["bench"]:  # what winclip-bench records of the machine (imports both backends: slow here)
    from winclip.benchmarks.bench_cli import machine
    seen["bench"] = machine()
print(json.dumps(seen))
"""


def test_the_emulated_cpu_is_read_from_hwcap_and_winclip_bench_names_it(arm_python):
    seen = {name: json.loads(emulated(arm_python, "-c", DESCRIBE, *(["bench"] if name == TARGET_CPU else []),
                                      arm_cpu=name).splitlines()[0])
            for name in ("cortex-a72", "cortex-a76", "max")}
    a76 = seen["cortex-a76"]
    assert a76["machine"] == "aarch64" and a76["describe"] == "Cortex-A76 (aarch64; asimd asimddp)"
    assert a76["bench"]["cpu"] == "Cortex-A76" and a76["bench"]["cpu_features"] == ["asimd", "asimddp"]
    assert a76["bench"]["int8_dot"] == "asimddp" and a76["bench"]["machine"] == "aarch64"
    assert seen["cortex-a72"]["describe"] == "Cortex-A72 (aarch64; asimd)"  # a Raspberry Pi 4: no dot product
    # max runs with the Cortex-A76's cpuinfo file: its features are the emulated CPU's own, from HWCAP
    assert {"asimddp", "i8mm", "bf16", "sve"} <= set(seen["max"]["flags"])
    assert seen["max"]["describe"] == "Cortex-A76 (aarch64; asimd asimddp i8mm sve bf16)"


# u8 activations x full-range s8 weights, the worst case first (every pair 2 x 255 x 127 > int16), then random
INT8_PRODUCTS = """
import json, sys
import numpy as np
import onnxruntime as ort
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
model = open(sys.argv[3], "rb").read()
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
out = session.run(None, {"a": a})[0]
exact = a.astype(np.int64) @ b.astype(np.int64)
print(json.dumps({"max_abs_diff": int(np.abs(out.astype(np.int64) - exact).max())}))
"""


def _matmul_integer(b: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8-products",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, b.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [None, b.shape[1]])],
                              [numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_arm_int8_kernels_add_full_range_weights_exactly(arm_python, tmp_path):
    """Why ARM gets full-range weights: its kernels sum u8 x s8 products exactly, with or without the dot product
    (Cortex-A72: NEON only; Cortex-A76: asimddp), where x86 without VNNI saturates."""
    pytest.importorskip("onnx", reason="the quantize extra is not installed (pip install '.[quantize]')")
    rng = np.random.default_rng(0)
    b = np.concatenate([np.tile(np.array([[127], [-128]], np.int8), (1, 8)).repeat(32, axis=0),
                        rng.integers(-128, 128, (64, 8), dtype=np.int8)], axis=1)  # (64, 16)
    a = np.concatenate([np.full((2, 64), 255, np.uint8), rng.integers(0, 256, (6, 64), dtype=np.uint8)])
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    (tmp_path / "m.onnx").write_bytes(_matmul_integer(b))
    args = ("-c", INT8_PRODUCTS, str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), str(tmp_path / "m.onnx"))
    for arm_cpu in ("cortex-a72", TARGET_CPU):
        assert json.loads(emulated(arm_python, *args, arm_cpu=arm_cpu).splitlines()[0])["max_abs_diff"] == 0, arm_cpu
    # on this x86 host the rule must agree with what its own kernels do
    host = json.loads(subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True).stdout)
    assert (host["max_abs_diff"] == 0) == (cpu.full_range_int8_exact(cpu.current()) is not None), host


SCORE = """
import sys
import numpy as np
from winclip.runtime import Detector
from winclip.runtime.images import read_image
bundle, out, engines, frames = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
images = [read_image(f) for f in frames]
results = {}
for name in engines:
    precision, backend = name.split("@")
    det = Detector.from_bundle(bundle, object="bottle", precision=precision, backend=backend, cache=False)
    zero = det(images[1:])
    det.set_memory(det.build_memory(images[:1]))
    few = det(images[1:])
    for mode, rs in (("zero", zero), ("few", few)):
        results[f"{name} {mode}-shot scores"] = np.array([r.image_score for r in rs], np.float64)
        results[f"{name} {mode}-shot maps"] = np.stack([r.anomaly_map for r in rs])
np.savez(out, **results)
"""


def _scores(python: Path, bundle: Path, out: Path, engines: str, frames: list[Path]) -> dict[str, np.ndarray]:
    """Scores and maps of the frames (the first is the few-shot memory) by each "precision@backend" of `engines`,
    zero- and few-shot, as `python` computes them (this interpreter, or the emulated aarch64 one)."""
    args = ["-c", SCORE, str(bundle), str(out), engines, *map(str, frames)]
    if python == Path(sys.executable):
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        emulated(python, *args)
    with np.load(out) as data:
        return dict(data)


def test_a_bundle_made_on_x86_scores_the_same_on_arm_and_arm_makes_a_guarded_int8_engine(arm_python, tiny_bundle,
                                                                                       tmp_path):
    t0 = time.perf_counter()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    (tmp_path / "frames").mkdir()
    frames = line_frames(tmp_path / "frames", 4)
    # winclip-quantize on the ARM box itself: weight range chosen there, guard run there
    emulated(arm_python, "-m", "winclip.calibration.engines.cli", str(bundle), "--precision", "int8",
             "--images", str(frames), "--holdout", "4")
    engine = Bundle.load(bundle).manifest.engine("int8")
    made = engine.made_by
    assert made["cpu"]["machine"] == "aarch64" and made["cpu"]["model"] == "Cortex-A76"
    assert made["cpu"]["int8_dot"] == "asimddp"
    assert made["settings"]["reduce_range"] is False and made["settings"]["weight_range"] == "full-range"
    assert made["settings"]["weight_range_why"].startswith("aarch64: ONNX Runtime's ARM int8 kernels")
    assert engine.guard["passed"] is True and not engine.accepted_degraded, engine.guard["failures"]
    print(f"int8 guard on aarch64: {json.dumps(engine.guard['modes'])} cosine {engine.guard['embedding_cosine_min']}")

    shown = sorted(frames.iterdir())[:4]  # the first is the few-shot memory, the rest are scored
    here = _scores(Path(sys.executable), bundle, tmp_path / "x86.npz", "fp32@onnxruntime,int8@onnxruntime", shown)
    there = _scores(arm_python, bundle, tmp_path / "arm.npz", "fp32@onnxruntime,int8@onnxruntime,fp32@openvino",
                    shown)
    # OpenVINO's ARM plugin against the same x86 reference (f32 compute: it defaults to f16 on ARM cores with fp16)
    diffs = {key: float(np.abs(here[key.replace("openvino", "onnxruntime")] - there[key]).max()) for key in there}
    print(f"aarch64 vs x86 max abs diff: {json.dumps(diffs)}")
    for key, diff in diffs.items():
        if key.startswith("fp32"):
            assert diff <= 1e-5, (key, diff)
    if cpu.full_range_int8_exact(cpu.current()) is not None:
        # exact int8 sums on both; an activation's rounding to u8 may flip where fp32 differs by 1e-7 (seen: 3e-4
        # on maps, 2e-5 on scores, against 2e-3 between int8 and fp32)
        assert all(diff <= 1e-3 for key, diff in diffs.items() if key.startswith("int8")), diffs
    else:  # x86 without VNNI: this full-range engine is refused by auto and warned about
        assert isa_problem(engine, cpu.current()) is not None

    # winclip-inspect on the ARM box, ONNX Runtime named (so that no backend timing runs under emulation) and its
    # default precision: auto takes the int8 engine made there (its guard holds on ARM), scoring as the API did
    (tmp_path / "normal").mkdir()
    (tmp_path / "parts").mkdir()
    shutil.copy(shown[0], tmp_path / "normal")
    for frame in shown[1:]:
        shutil.copy(frame, tmp_path / "parts")
    said = emulated(arm_python, "-m", "winclip.runtime.line.cli", str(bundle), "--source", str(tmp_path / "parts"),
                    "--backend", "onnxruntime", "--object", "bottle", "--normal", str(tmp_path / "normal"), "--out", str(tmp_path / "inspect"))
    assert "int8 engine (auto: guarded int8 on CPU" in said and "3 scored, 0 errors" in said, said
    events = [json.loads(line) for line in (tmp_path / "inspect" / "events.jsonl").read_text().splitlines()]
    scores = np.array([e["image_score"] for e in sorted(events, key=lambda e: e["source"])])
    # dynamic int8 sets its activation scales per call: frames one by one here, the API scored them as one batch
    assert np.abs(scores - there["int8@onnxruntime few-shot scores"]).max() <= 5e-3
    print(f"whole test {time.perf_counter() - t0:.1f} s")
