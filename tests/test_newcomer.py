"""A newcomer's first hour (issue 29): what the README promises holds, and the frictions met on the way are gone.

- the README's install line and CI's are the same extras, and every runtime module imports without the
  optional triton-client extra;
- install hints name the source checkout (`pip install ".[extra]"`), never a PyPI package that does not exist;
- long commands say how many images they will score and show progress through a pipe;
- an interrupted `winclip-eval --out eval/real` leaves no empty `eval/`;
- the evaluation report's heat maps are coloured on the run's own score range;
- `winclip-eval BUNDLE ...` is the usage its --help shows; `.gitignore` knows the quick start's folders.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import import_blocker, run_cli, textile_images

ROOT = Path(__file__).resolve().parent.parent


def _extras(text: str) -> set[str]:
    (found,) = re.findall(r'pip install (?:-q )?-e "\.\[([a-z,-]+)\]"', text)
    return set(found.split(","))


def test_the_readme_installs_exactly_what_ci_tests_with():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    main_install = [line for line in ci.splitlines() if line.startswith("python -m pip install -q -e")]
    assert len(main_install) == 1
    assert _extras(readme) == _extras(main_install[0])


def test_every_runtime_module_imports_without_the_triton_client():
    code = import_blocker(("tritonclient",)) + (
        "import importlib, pkgutil, winclip.runtime, winclip.calibration\n"
        "for package in (winclip.runtime, winclip.calibration):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "from winclip.runtime.backends.triton import _grpc\n"
        "from winclip.runtime.errors import MissingExtra\n"
        "try:\n"
        "    _grpc()\n"
        "except MissingExtra as exc:\n"
        "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install ".[triton-client]"' in proc.stdout


def test_install_hints_name_the_source_checkout():
    """The package is installed from its folder; a hint like pip install 'winclip-edge[x]' fails (not on PyPI)."""
    from winclip.runtime.errors import install_hint

    assert install_hint("quantize").startswith('pip install ".[quantize]"')
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in ROOT.rglob("*.py")
                 if not any(part.startswith(".") or part in ("build", "tests") for part in p.relative_to(ROOT).parts)
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "winclip-edge[" in line]
    assert not offenders


def good_textiles(folder: Path, count: int) -> Path:
    """A folder of `count` real good textiles, as PNG files 0.png, 1.png, ..."""
    folder.mkdir()
    for i, path in enumerate(textile_images("nominal", count)):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.imread(str(path)))
    return folder


def test_inspect_says_how_many_images_it_scores_and_shows_progress_in_a_pipe(tiny_bundle, tmp_path):
    frames = good_textiles(tmp_path / "frames", 3)
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--object", "bottle", "--source", str(frames),
                   "--out", str(tmp_path / "run"), check=True)  # stderr is a pipe here, as through tee
    assert "scoring 3 images" in proc.stderr and "3/3 [" in proc.stderr, proc.stderr


def test_calibrate_says_how_many_images_it_scores(tiny_bundle, tmp_path):
    normals = good_textiles(tmp_path / "normals", 8)
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--normal", str(normals),
                   "--shots", "2", "--out", str(tmp_path / "p"), check=True)
    assert "scoring 8 images" in proc.stderr and "8/8 [" in proc.stderr, proc.stderr


def test_an_interrupted_write_leaves_no_folder_it_made(tmp_path):
    from winclip.runtime.atomic import staged_folder

    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "eval" / "real") as tmp:
            (tmp / "results.md").write_text("half")
            raise KeyboardInterrupt  # Ctrl-C in the middle of an evaluation
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "kept" / "real"):
            raise RuntimeError("failed")
    assert (tmp_path / "kept").is_dir()  # a folder that was there before stays
    with staged_folder(tmp_path / "eval" / "real") as tmp:
        (tmp / "results.md").write_text("whole")
    assert (tmp_path / "eval" / "real" / "results.md").read_text() == "whole"


def test_report_heat_maps_are_coloured_on_the_runs_own_range(tmp_path):
    from winclip.calibration.evaluation.evaluate import _examples
    from winclip.calibration.evaluation.layouts import Sample

    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((32, 32, 3), 128, np.uint8))
        paths.append(path)
    kept = [Sample(p, int(i >= 2), "good" if i < 2 else "scratch") for i, p in enumerate(paths)]
    maps = np.full((4, 32, 32), 0.28, np.float16)  # scores in a narrow band, as random or weak weights give
    maps[2:, 8:16, 8:16] = 0.33  # the defects' hot spots
    examples = _examples(kept, np.array([0, 0, 1, 1]), np.array([0.28, 0.28, 0.33, 0.33]), maps, None, 1)
    defect = next(e for e in examples if "defect" in e.caption)
    hot, cold = defect.image[12, 12].astype(int), defect.image[28, 28].astype(int)  # BGR
    assert hot[2] - hot[0] > 60 and cold[0] - cold[2] > 60, (hot, cold)  # red on the spot, blue around it
    assert "0.280 (blue) to 0.330 (red)" in defect.caption


def test_eval_usage_shows_the_bundle_form(tiny_bundle):
    from click.testing import CliRunner

    from winclip.calibration.evaluation.cli import main

    result = CliRunner().invoke(main, ["--help"], prog_name="winclip-eval")
    assert result.exit_code == 0 and result.output.startswith("Usage: winclip-eval BUNDLE --dataset DIR")
    result = CliRunner().invoke(main, [str(tiny_bundle)])  # the default subcommand: its own usage error
    assert result.exit_code == 2 and "--dataset" in result.output


def test_gitignore_keeps_the_quick_starts_folders_out_of_git():
    ignored = set((ROOT / ".gitignore").read_text().split())
    assert {"/data/", "/eval/", "/profiles/", "bundles/", "runs/"} <= ignored  # anchored: calibration/profiles/ is code


def test_the_quick_start_sample_holds_enough_good_parts_for_its_false_alarm_rate(tmp_path):
    from winclip.calibration.evaluation.data import SAMPLE_GOOD, SAMPLE_PER_DEFECT, SAMPLE_REFERENCES
    from winclip.calibration.profiles.setup import needed_for_rate

    proc = run_cli("winclip-eval", "prepare", str(tmp_path / "real"), "--sample", check=True)
    counts = {p.relative_to(tmp_path / "real").as_posix(): len(list(p.iterdir()))
              for p in (tmp_path / "real").glob("*/*") if p.is_dir()}
    assert counts == {"textile/good": SAMPLE_GOOD, "textile/reference": SAMPLE_REFERENCES,
                      "textile/local": SAMPLE_PER_DEFECT, "textile/global": SAMPLE_PER_DEFECT,
                      "solar_cell/good": SAMPLE_GOOD, "solar_cell/reference": SAMPLE_REFERENCES,
                      "solar_cell/defect": SAMPLE_PER_DEFECT}, proc.stdout
    readme = (ROOT / "README.md").read_text()
    shots, rate = 4, 0.05  # what the README's calibrate line asks for
    assert f"--shots {shots}" in readme and f"--false-alarm-rate {rate}" in readme
    assert SAMPLE_GOOD >= shots + needed_for_rate(rate)
