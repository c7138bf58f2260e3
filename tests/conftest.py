"""Shared fixtures: seeded random-weight open_clip models saved as checkpoint files.

Pretrained weights cannot be downloaded here, so every bundle is exported from a
checkpoint file the tests write themselves, through the real loading path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="winclip-test-cache-")  # the runtime's graph cache

TESTS = Path(__file__).parent
TINY_CONFIG = TESTS / "model_configs" / "winclip-tiny.json"
TINY = "winclip-tiny"
VIT = "ViT-B-16-plus-240"


def make_model(name: str, seed: int = 0):
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


def save_checkpoint(model, path: Path) -> Path:
    import torch

    torch.save(model.state_dict(), path)
    return path


def export(out: Path, checkpoint: Path, backbone: str, objects=("bottle",), **kwargs) -> Path:
    from winclip.export.backbones import register_model_configs
    from winclip.export.exporter import ExportOptions, export_bundle

    register_model_configs([TINY_CONFIG])
    opts = ExportOptions(out=out, backbone=backbone, pretrained=str(checkpoint), objects=list(objects), **kwargs)
    return export_bundle(opts, log=lambda msg: None)


@pytest.fixture(scope="session")
def tiny_model():
    return make_model(TINY)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("bundles") / "tiny", tiny_checkpoint, TINY, objects=("bottle", "metal_nut"))


@pytest.fixture
def tiny_bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy a test may damage."""
    import shutil

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


def run_cli(name: str, *args: str, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script through the same interpreter (and so the same install)."""
    module = {"winclip-export": "winclip.export.cli", "winclip-inspect": "winclip.runtime.inspect_cli"}[name]
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def elpv_images(n: int, start: int = 0) -> list[Path]:
    import elpv_dataset

    root = Path(elpv_dataset.__file__).parent / "data" / "images"
    return sorted(root.glob("*.png"))[start:start + n]


def textile_images(kind: str, n: int) -> list[Path]:
    import conformal_clip_data as ccd

    folder = {"nominal": ccd.nominal_dir, "local": ccd.local_dir, "global": ccd.global_dir}[kind]()
    return sorted(folder.glob("*.jpg"))[:n]


def read(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
