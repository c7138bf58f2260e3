"""The wheel: winclip.* import names, the runtime alone does not pull torch."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import import_blocker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("needs git to copy the tracked tree")
    src = tmp_path_factory.mktemp("src")
    # build from a clean copy of the tracked files, so no build/ or egg-info lands in the checkout
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True)
    return next(out.glob("winclip_edge-*.whl"))


def test_wheel_maps_the_top_level_folders_onto_winclip(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("winclip/runtime/detector.py", "winclip/export/exporter.py", "winclip/calibration/evaluation/datasets.py", "winclip/runtime/line/sinks/mqtt.py",
                   "winclip/benchmarks/bench_cli.py", "winclip/benchmarks/flops.py", "winclip/runtime/profiles/versions.py",
                   "winclip/calibration/evaluation/__init__.py"):
        assert module in names
    assert not any(n.endswith("/testing.py") for n in names)  # the tests' random-weight helpers stay in tests/
    assert not any(n.startswith(("runtime/", "export/", "calibration/", "benchmarks/", "tests/")) for n in names)
    assert "winclip/__init__.py" not in names  # a namespace: other winclip-* packages may join it


def test_base_install_requires_no_torch_and_one_onnxruntime_per_extra(wheel):
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("torch", "open_clip", "onnxruntime")) for r in base), base
    assert any(r.startswith("onnxruntime") and "extra == \"cpu\"" in r for r in requires)
    assert any(r.startswith("onnxruntime-gpu") and "extra == \"gpu\"" in r for r in requires)
    assert not any(r.startswith("onnxruntime") and "extra == \"export\"" in r for r in requires)


def test_serving_libraries_come_only_with_their_extras(wheel):
    archive = zipfile.ZipFile(wheel)
    assert {"winclip/serve/server.py", "winclip/serve/repository.py", "winclip/runtime/backends/triton.py"} <= set(
        archive.namelist())
    meta = next(n for n in archive.namelist() if n.endswith("METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in archive.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    serving = [r for r in requires if r.startswith(("nvidia-pytriton", "tritonclient"))]
    assert serving and all("extra ==" in r for r in serving), serving  # the edge runtime needs neither
    assert any(r.startswith("nvidia-pytriton") and 'extra == "serve"' in r for r in serving)
    client = [r for r in serving if 'extra == "triton-client"' in r]
    assert client and all(r.startswith("tritonclient[grpc]") for r in client)  # a client needs no server


BLOCK_TORCH = import_blocker(("torch", "open_clip", "torchvision"), "{name} is not installed on an edge box")


def test_installed_copy_imports_and_runs_without_torch(wheel, tmp_path, tiny_bundle):
    """The wheel installed on its own, with torch made unimportable: the edge side still works."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = BLOCK_TORCH + (
        "import numpy as np, winclip.runtime as r, winclip.calibration.profiles.setup\n"
        "from winclip.runtime import Detector\n"
        f"assert r.__file__.startswith({str(target)!r}), r.__file__\n"
        f"d = Detector.from_bundle({str(tiny_bundle)!r}, object='bottle', provider='cpu', cache=False)\n"
        "d.build_memory([np.full((40, 40, 3), 90, np.uint8)])\n"
        "print(d(np.zeros((40, 40, 3), np.uint8))[0].image_score)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= float(proc.stdout.strip()) <= 1.0
    # and the blocker does block: the export side needs torch
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import winclip.export.exporter"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "not installed on an edge box" in proc.stderr
