"""A box with onnxruntime-gpu but no CUDA libraries (or no GPU): the most common GPU failure, testable on a CPU.

onnxruntime-gpu lists the CUDA provider anywhere, then quietly runs on the CPU when the CUDA or cuDNN
libraries do not load. `--provider cuda` must then fail in one line naming what did not load, and
`auto` must fall back to the CPU and say why. CI runs this file in a venv that has onnxruntime-gpu
without its CUDA libraries (.ci/run, WINCLIP_EXPECT_CUDA_PROVIDER=1 there so that it can never skip
silently); elsewhere it is skipped unless that onnxruntime lists CUDA.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

ort = pytest.importorskip("onnxruntime")
HAS_CUDA_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()
if not HAS_CUDA_PROVIDER:
    if os.environ.get("WINCLIP_EXPECT_CUDA_PROVIDER"):
        raise RuntimeError("WINCLIP_EXPECT_CUDA_PROVIDER is set but this onnxruntime lists no CUDA provider")
    pytest.skip("needs onnxruntime-gpu (this onnxruntime has no CUDA provider)", allow_module_level=True)

from winclip.runtime.backends.onnxruntime import cuda_libraries_problem  # noqa: E402

pytestmark = pytest.mark.skipif(cuda_libraries_problem() is None,
                                reason="the CUDA libraries load here: this is a real GPU box, see gpu_check")


@pytest.fixture
def bundle(request) -> Path:
    given = os.environ.get("WINCLIP_TEST_BUNDLE")
    return Path(given) if given else request.getfixturevalue("tiny_bundle")


def test_cuda_asked_for_fails_in_one_line_naming_the_library(bundle, tmp_path):
    problem = cuda_libraries_problem()
    assert ".so" in problem or ".dll" in problem  # a library by name, as the loader said it
    src = tmp_path / "src"
    src.mkdir()
    import cv2

    cv2.imwrite(str(src / "a.png"), np.full((40, 40, 3), 128, np.uint8))
    proc = run_cli("winclip-inspect", str(bundle), "--source", str(src), "--out", str(tmp_path / "out"),
                   "--provider", "cuda", "--object", _object(bundle))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "CUDA was asked for, but onnxruntime cannot start it" in errors[0] and problem in errors[0]
    assert 'pip install ".[gpu]"' in errors[0]


def test_auto_falls_back_to_the_cpu_and_says_why(bundle, tmp_path):
    from winclip.runtime import Detector
    from winclip.runtime.errors import BundleError

    det = Detector.from_bundle(bundle, object=_object(bundle), provider="auto", cache=False)
    assert det.providers[0] == "CPUExecutionProvider"
    assert "provider auto: CUDA libraries do not load" in det.describe() and cuda_libraries_problem() in det.describe()
    assert det(np.zeros((32, 32, 3), np.uint8))[0].image_score >= 0.0
    with pytest.raises(BundleError, match="CUDA was asked for, but onnxruntime cannot start it"):
        Detector.from_bundle(bundle, object=_object(bundle), provider="cuda", cache=False)


def _object(bundle: Path) -> str:
    import json

    return sorted(json.loads((bundle / "manifest.json").read_text())["text"]["objects"])[0]
