"""The edge side on its own: every command's --help, and a bundle scored, where torch may be absent.

CI runs this file a second time in a venv that installed only `.[cpu]` (see .ci/run), on a bundle
the export step made (WINCLIP_TEST_BUNDLE); here, in the full environment, it uses the tiny bundle.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import SCRIPTS, import_blocker, run_cli

RUNTIME_ONLY = importlib.util.find_spec("torch") is None


@pytest.fixture
def bundle(request) -> Path:
    given = os.environ.get("WINCLIP_TEST_BUNDLE")
    if given:
        return Path(given)
    if RUNTIME_ONLY:
        pytest.skip("a runtime-only environment needs WINCLIP_TEST_BUNDLE (made by the export step)")
    return request.getfixturevalue("tiny_bundle")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_command_has_help(name):
    def check(*args: str) -> None:
        proc = run_cli(name, *args, "--help", script=True)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: ") and "Traceback" not in proc.stderr, proc.stderr
        text = proc.stdout
        if "\nCommands:\n" in text:  # a command group: every sub-command gets the same check
            commands = [line.split()[0] for line in text.split("\nCommands:\n", 1)[1].splitlines() if line.strip()]
            assert commands, f"{name}: a group without commands"
            for command in commands:
                check(*args, command)
            return
        options = [line for line in text.splitlines() if line.strip().startswith("--")]
        where = " ".join((name, *args))
        assert options and all(len(line.strip()) > 20 for line in options), f"{where}: an option without help text"

    check()


def test_export_without_torch_says_what_to_install():
    if not RUNTIME_ONLY:
        pytest.skip("torch is installed here")
    proc = run_cli("winclip-export", "--out", "/tmp/never", script=True)
    assert proc.returncode != 0 and 'pip install ".[export' in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_scores_a_folder(bundle, tmp_path):
    import cv2

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.png"), rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8))
    objects = json.loads((bundle / "manifest.json").read_text())["text"]["objects"]
    proc = run_cli("winclip-inspect", str(bundle), "--source", str(src), "--out", str(tmp_path / "out"),
                   "--object", sorted(objects)[0], "--normal", str(src), "--shots", "1", "--threshold", "0.5",
                   script=True)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len(events) == 3 and all(0.0 <= e["image_score"] <= 1.0 and isinstance(e["anomalous"], bool) for e in events)


def test_torch_is_never_imported_by_the_edge_side(bundle):
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from winclip.runtime import Detector\n"
            "import winclip.calibration.profiles.setup, winclip.calibration.engines.guard, winclip.runtime.line.cli\n"
            f"d = Detector.from_bundle({str(bundle)!r}, provider='cpu', object=None if False else "
            f"sorted(__import__('json').load(open({str(bundle / 'manifest.json')!r}))['text']['objects'])[0])\n"
            "d(np.zeros((32, 32, 3), np.uint8))\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision')]\n"
            "sys.exit(f'imported {bad}' if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_help_works_where_onnxruntime_is_missing():
    """--help is parsed before anything needs onnxruntime; a real run then names the extra to install."""
    import subprocess
    import sys

    block = import_blocker(("onnxruntime",))
    for module in ("winclip.runtime.line.cli", "winclip.calibration.profiles.cli", "winclip.calibration.engines.cli"):
        proc = subprocess.run([sys.executable, "-c", block + f"import runpy; runpy.run_module({module!r}, "
                               "run_name='__main__')", "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: "), (module, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", block + "import runpy; runpy.run_module('winclip.runtime.line.cli', "
                           "run_name='__main__')", "b", "--source", ".", "--out", "/tmp/x"], capture_output=True, text=True)
    assert proc.returncode == 1 and 'onnxruntime backend needs onnxruntime: pip install ".[cpu]"' in proc.stderr
