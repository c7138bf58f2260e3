"""Shared fixtures: seeded random-weight open_clip models saved as checkpoint files.

Pretrained weights cannot be downloaded here, so every bundle is exported from a
checkpoint file the tests write themselves, through the real loading path
(random_models.py). The image sets live in the package
(winclip.calibration.evaluation.datasets) so that the benchmarks use the very same ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from winclip.calibration.evaluation.datasets import elpv_images, textile_images  # noqa: F401  (re-exported for tests)
from random_models import VIT_B16_PLUS as VIT
from random_models import export_from_checkpoint, make_model as _make_model, save_checkpoint  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="winclip-test-cache-")  # the runtime's graph cache

TESTS = Path(__file__).parent
# Set in a test process that runs under QEMU (tests/test_emulated_x86.py): the CPU model it emulates, so the
# commands the tests start run on that CPU too (QEMU's user mode runs a child's exec natively otherwise).
EMULATED_CPU_VARIABLE = "WINCLIP_EMULATED_CPU"
TINY_BUNDLE_VARIABLE = "WINCLIP_TINY_BUNDLE"  # a tiny bundle made natively, for such a process (read only)
TINY_CONFIG = TESTS / "model_configs" / "winclip-tiny.json"
TINY = "winclip-tiny"
SCRIPTS = {"winclip-export": "winclip.export.cli", "winclip-inspect": "winclip.runtime.line.cli",
           "winclip-quantize": "winclip.calibration.engines.cli", "winclip-bench": "winclip.benchmarks.bench_cli",
           "winclip-calibrate": "winclip.calibration.profiles.cli",
           "winclip-eval": "winclip.calibration.evaluation.cli", "winclip-serve": "winclip.serve.cli"}


def make_model(name: str, seed: int = 0):
    return _make_model(name, seed, configs=[TINY_CONFIG])


def export(out: Path, checkpoint: Path, backbone: str, objects=("bottle",), **kwargs) -> Path:
    return export_from_checkpoint(out, checkpoint, backbone, objects, configs=[TINY_CONFIG], **kwargs)


@pytest.fixture(scope="session")
def tiny_model():
    return make_model(TINY)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> Path:
    """The tiny model's bundle: exported here, or handed over by the process that started this one under QEMU
    (made natively, it saves the emulated run torch and the export)."""
    handed = os.environ.get(TINY_BUNDLE_VARIABLE)
    if handed:
        return Path(handed)
    checkpoint = request.getfixturevalue("tiny_checkpoint")
    return export(tmp_path_factory.mktemp("bundles") / "tiny", checkpoint, TINY, objects=("bottle", "metal_nut"))


@pytest.fixture
def tiny_bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def vit_model():
    return make_model(VIT, seed=1)


@pytest.fixture(scope="session")
def vit_checkpoint(vit_model, tmp_path_factory) -> Path:
    return save_checkpoint(vit_model, tmp_path_factory.mktemp("vit") / "vit-b-16-plus-240-random.pt")


@pytest.fixture(scope="session")
def vit_bundle(vit_checkpoint, tmp_path_factory) -> Path:
    """The real ViT-B-16+ architecture, random weights, exported through the CLI."""
    out = tmp_path_factory.mktemp("vit-bundle") / "vitb16plus"
    run_cli("winclip-export", "--backbone", "ViT-B-16+", "--pretrained", str(vit_checkpoint),
            "--object", "bottle", "--object", "solar_cell", "--out", str(out), check=True)
    return out


def run_cli(name: str, *args: str, check: bool = False, env: dict | None = None,
            script: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command through this interpreter's install: `python -m module`, or the console script itself."""
    if script:
        exe = Path(sys.executable).parent / name
        assert exe.is_file(), f"console script {name} is not installed beside {sys.executable}"
        cmd = [sys.executable, str(exe), *args] if emulator() else [str(exe), *args]
    else:
        cmd = [sys.executable, "-m", SCRIPTS[name], *args]
    cmd = [*emulator(), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def emulator() -> list[str]:
    """The QEMU command line this test process runs under (empty when it runs natively)."""
    model = os.environ.get(EMULATED_CPU_VARIABLE)
    return [shutil.which("qemu-x86_64-static") or "qemu-x86_64", "-cpu", model] if model else []


def needs(why: str) -> None:
    """Skip a test whose optional peer or extra is missing here; under CI (`CI` set) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {why}")
    pytest.skip(why, allow_module_level=True)


def needs_openvino() -> None:
    """The openvino extra (openvino and nncf), or a skip (under CI: a failure)."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as missing:
        needs(f"the openvino extra is not installed ({missing.name}): pip install '.[openvino]'")


def line_frames(folder: Path, per_kind: int) -> Path:
    """A folder of a line's real frames: `per_kind` good textiles and as many with local defects."""
    for kind in ("nominal", "local"):
        for p in textile_images(kind, per_kind):
            shutil.copy(p, folder / f"{kind}-{p.name}")
    return folder


def import_blocker(modules: tuple[str, ...], message: str = "{name} is not installed") -> str:
    """Python source (for `python -c`) that makes the packages `modules` unimportable in that interpreter:
    what a box without them would see. `message` may name the module ({name})."""
    return ("import importlib.abc, sys\n"
            "class Blocked(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {tuple(modules)!r}:\n"
            f"            raise ImportError(f{message!r})\n"
            "sys.meta_path.insert(0, Blocked())\n")


def read(path: Path) -> np.ndarray:
    """An image as the runtime reads it (OpenCV, as stored)."""
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def open_clip_prototypes(model, model_name: str, object_name: str) -> np.ndarray:
    """(2, D) text prototypes computed here with open_clip, not by the export's code."""
    import open_clip
    import torch

    from winclip.export.prompts import prompt_sets

    tokenizer = open_clip.get_tokenizer(model_name)
    rows = []
    with torch.no_grad():
        for prompts in prompt_sets(object_name):
            e = model.encode_text(tokenizer(prompts)).double()
            e = e / e.norm(dim=-1, keepdim=True)
            rows.append((e.mean(0) / e.mean(0).norm()).numpy())
    return np.stack(rows)
