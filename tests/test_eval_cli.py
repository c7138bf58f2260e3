"""winclip-eval end to end with the tiny random-weight bundle on real images (synthetic defects, ELPV).

The numbers carry no meaning about CLIP; what is checked is that every number
can be recomputed from what was saved, by code other than winclip-eval's, and
that bad input is skipped, counted and said.
"""

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import read, run_cli
from test_eval_metrics import slow_pro
from winclip.calibration.evaluation.cli import main
from winclip.runtime.detector import Detector
from winclip.runtime.postprocess import upsample_map

OBJECTS = ["--object", "textile=bottle", "--object", "solar_cell=metal_nut"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """MVTec layout: textile and solar_cell, 4 train goods, 4 test goods, 2 x scratch / blob / spot with masks."""
    out = tmp_path_factory.mktemp("data") / "synthetic"
    result = CliRunner().invoke(main, ["synthesize", str(out)])
    assert result.exit_code == 0, result.output
    return out


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception  # never a traceback
    return result


def _f1_max(labels, scores):
    """Best F1 over every threshold, by brute force."""
    best = 0.0
    for t in np.unique(scores):
        flagged = scores >= t
        tp = np.sum(flagged & labels)
        if tp:
            best = max(best, 2 * tp / (flagged.sum() + labels.sum()))
    return best


def _saved(scores_dir, category, run):
    rows = list(csv.DictReader(open(scores_dir / category / "images.csv")))
    scores = np.array([float(r["score"]) for r in csv.DictReader(open(scores_dir / category / f"{run}.csv"))])
    return rows, scores, np.load(scores_dir / category / f"{run}.npy")


def test_mvtec_layout_end_to_end_at_0_and_1_shots(tiny_bundle, synthetic, tmp_path):
    out = tmp_path / "out"
    result = invoke(tiny_bundle, "--dataset", synthetic, *OBJECTS, "--shots", "0,1", "--seeds", "2",
                    "--out", out, "--save-scores", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert "| **mean** |" in result.output and "### 1-shot" in result.output
    assert "cannot identify as pretrained" in result.output  # a random-weight checkpoint file
    report = json.loads((out / "results.json").read_text())
    assert report["complete"] and report["layout"] == "mvtec" and report["pixel_size"] == [80, 80]
    assert report["engine"]["precision"] == "fp32" and report["engine"]["provider"] == "CPU"
    assert report["seconds_per_image"]["engine"] > 0
    scores_dir = out / "scores"
    per_category = {}
    for cat in report["categories"]:
        assert cat["good"] == 4 and cat["defect"] == 6 and cat["pixel_metrics"]
        runs = {(r["setting"], r["seed"]): r for r in cat["runs"]}
        assert set(runs) == {("0-shot", None), ("1-shot", 0), ("1-shot", 1)}
        assert len(runs[("1-shot", 0)]["references"]) == 1
        assert runs[("1-shot", 0)]["references"][0].startswith(f"{cat['name']}/train/good/")
        masks = np.load(scores_dir / cat["name"] / "masks.npy").astype(bool)
        for (setting, seed), run in runs.items():
            rows, scores, maps = _saved(scores_dir, cat["name"], setting if seed is None else f"{setting}-seed{seed}")
            labels = np.array([int(r["label"]) for r in rows]).astype(bool)
            assert maps.dtype == np.float16 and maps.shape == (10, 80, 80) and masks.shape == maps.shape
            assert all((r["label"] == "1") == (r["defect"] != "good") for r in rows)
            m = run["metrics"]
            assert m["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
            assert m["image_ap"] == pytest.approx(average_precision_score(labels, scores))
            assert m["image_f1_max"] == pytest.approx(_f1_max(labels, scores))
            assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel().astype(np.float64)))
            assert m["pixel_f1_max"] == pytest.approx(_f1_max(masks.ravel(), maps.ravel().astype(np.float64)))
            assert m["pixel_pro"] == pytest.approx(slow_pro(masks, maps.astype(np.float64)))
        per_category[cat["name"]] = runs
    # the table's rows are the runs' means, and the mean row the mean of the categories
    rows = list(csv.DictReader(open(out / "results.csv")))
    one_shot = {r["category"]: r for r in rows if r["setting"] == "1-shot"}
    for name, runs in per_category.items():
        values = [runs[("1-shot", s)]["metrics"]["pixel_pro"] for s in (0, 1)]
        assert float(one_shot[name]["pixel_pro"]) == pytest.approx(np.mean(values))
        assert float(one_shot[name]["pixel_pro_std"]) == pytest.approx(np.std(values))
    assert float(one_shot["mean"]["image_auroc"]) == pytest.approx(
        np.mean([float(one_shot[n]["image_auroc"]) for n in per_category]))
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and page.count("<figure>") == 16  # curves + 8 overlays each
    assert not list(tmp_path.glob(".out.partial-*")) and not (out / ".work").exists()


def test_cached_scoring_equals_the_detector_called_per_image(tiny_bundle, synthetic, tmp_path):
    out = tmp_path / "out"
    result = invoke(tiny_bundle, "--dataset", synthetic, "--categories", "textile", *OBJECTS[:2], "--shots", "0",
                    "--pixel-size", "40", "--out", out, "--save-scores", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert "pixel metrics at 40x40" in result.output
    rows, scores, maps = _saved(out / "scores", "textile", "0-shot")
    detector = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    for row, score, saved_map in zip(rows, scores, maps):
        frame = read(synthetic / row["file"])
        assert detector([frame])[0].image_score == pytest.approx(score, abs=1e-6)
        grid = detector.score([frame])[0].grid_map[0]
        np.testing.assert_allclose(saved_map, upsample_map(grid, 40, 40), atol=1e-3)  # float16 rounding


def test_a_category_the_bundle_has_no_text_for_is_named_with_the_export_command(tiny_bundle, synthetic, tmp_path):
    result = invoke(tiny_bundle, "--dataset", synthetic, *OBJECTS[:2], "--shots", "0", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [c["name"] for c in report["categories"]] == ["textile"] and not report["complete"]
    (skipped,) = report["skipped_categories"]
    assert skipped["name"] == "solar_cell" and "no text embeddings for 'solar cell'" in skipped["reason"]
    assert "winclip-export --backbone winclip-tiny" in skipped["reason"] and "--object 'solar cell'" in skipped["reason"]
    assert "INCOMPLETE: category solar_cell not evaluated" in result.output
    # with no category left to evaluate: a one-line error and nothing written
    result = invoke(tiny_bundle, "--dataset", synthetic, "--shots", "0", "--out", tmp_path / "none")
    assert result.exit_code != 0 and "Error: no category could be evaluated" in result.output
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none.*"))


def test_bad_input_is_skipped_counted_and_said(tiny_bundle, synthetic, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    textile = data / "textile"
    (textile / "ground_truth" / "blob").iterdir().__next__().unlink()  # a defect image without its mask
    small = next((textile / "ground_truth" / "spot").iterdir())  # a mask of another size than its image
    cv2.imwrite(str(small), cv2.resize(read(small), (50, 50), interpolation=cv2.INTER_NEAREST))
    next((textile / "test" / "good").iterdir()).write_bytes(b"not an image")  # unreadable
    for extra in sorted((data / "solar_cell" / "train" / "good").iterdir())[1:]:  # fewer normals than shots
        extra.unlink()
    (data / "empty_cat" / "test" / "good").mkdir(parents=True)  # an empty category
    (data / "empty_cat" / "train" / "good").mkdir(parents=True)
    out = tmp_path / "out"
    result = invoke(tiny_bundle, "--dataset", data, *OBJECTS, "--object", "empty_cat=bottle", "--shots", "0,2",
                    "--seeds", "1", "--out", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert not report["complete"]
    cats = {c["name"]: c for c in report["categories"]}
    assert set(cats) == {"textile", "solar_cell"}
    assert report["skipped_categories"] == [{"name": "empty_cat", "reason": "no test images"}]
    skipped = "\n".join(cats["textile"]["skipped_images"])
    assert len(cats["textile"]["skipped_images"]) == 3 and (cats["textile"]["good"], cats["textile"]["defect"]) == (3, 4)
    assert "no mask" in skipped and "mask is 50x50" in skipped and "cannot decode" in skipped
    assert [r["setting"] for r in cats["solar_cell"]["runs"]] == ["0-shot"]
    assert "fewer readable normal reference images (1 listed) than shots (2)" in cats["solar_cell"]["notes"][0]
    assert [r["setting"] for r in cats["textile"]["runs"]] == ["0-shot", "2-shot"]
    md = (out / "results.md").read_text()
    for said in ("INCOMPLETE: category empty_cat not evaluated: no test images",
                 "INCOMPLETE: category textile: 3 images skipped", "INCOMPLETE: category solar_cell: left out 2-shot"):
        assert said in md and said in result.output
    assert "INCOMPLETE" in (out / "report.html").read_text()


def test_folder_layout_with_elpv_image_metrics_only(tiny_bundle, tmp_path):
    data = tmp_path / "elpv"
    result = invoke("prepare", data, "--source", "elpv", "--per-class", "5", "--references", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (data / "solar_cell").iterdir()) == ["defect", "good", "reference"]
    assert len(list((data / "solar_cell" / "defect").iterdir())) == 5
    out = tmp_path / "out"
    result = invoke(tiny_bundle, "--dataset", data, "--object", "solar_cell=metal_nut", "--shots", "0,1", "--seeds", "2",
                    "--out", out, "--save-scores", "--provider", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["layout"] == "folder" and report["complete"]
    (cat,) = report["categories"]
    assert not cat["pixel_metrics"] and (cat["good"], cat["defect"]) == (5, 5)
    for run in cat["runs"]:
        assert run["metrics"]["pixel_auroc"] is None and run["metrics"]["image_auroc"] is not None
        if run["shots"]:
            assert run["references"][0].startswith("solar_cell/reference/")
    assert not (out / "scores" / "solar_cell" / "masks.npy").exists()
    assert "n/a" in result.output
    # the ELPV labels say which images are good: probability 0 only
    from winclip.calibration.evaluation.datasets import elpv_labels

    probability = {p.name: prob for p, prob, _ in elpv_labels()}
    rows = list(csv.DictReader(open(out / "scores" / "solar_cell" / "images.csv")))
    assert all(probability[r["file"].split("/")[-1]] == (1.0 if r["label"] == "1" else 0.0) for r in rows)


def test_visa_layout_gives_the_numbers_of_the_same_images_in_mvtec_layout(tiny_bundle, synthetic, tmp_path):
    rows = ["object,split,label,image,mask"]
    for image in sorted(synthetic.glob("textile/train/good/*")):
        rows.append(f"bottle,train,normal,{image.relative_to(synthetic)},")
    for image in sorted(synthetic.glob("textile/test/*/*")):
        kind = image.parent.name
        mask = "" if kind == "good" else f"textile/ground_truth/{kind}/{image.stem}_mask.png"
        rows.append(f"bottle,test,{'normal' if kind == 'good' else 'anomaly'},{image.relative_to(synthetic)},{mask}")
    rows.append("bottle,test,anomaly,textile/test/blob/missing.png,textile/ground_truth/blob/missing_mask.png")
    visa = tmp_path / "visa"
    shutil.copytree(synthetic, visa)
    (visa / "split_csv").mkdir()
    (visa / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    results = {}
    for layout, extra in (("visa", []), ("mvtec", OBJECTS[:2] + ["--categories", "textile"])):
        out = tmp_path / f"out-{layout}"
        result = invoke(tiny_bundle, "--dataset", visa, "--layout", layout, *extra, "--shots", "0,1", "--seeds", "1",
                        "--out", out, "--provider", "cpu")
        assert result.exit_code == 0, result.output
        report = json.loads((out / "results.json").read_text())
        (cat,) = report["categories"]
        results[layout] = {r["setting"]: r["metrics"] for r in cat["runs"]}
        if layout == "visa":  # the CSV row naming a missing image (header, 4 train, 10 test, then it) is skipped
            assert not report["complete"] and len(cat["skipped_images"]) == 1
            assert "line 16" in cat["skipped_images"][0] and "not found" in cat["skipped_images"][0]
    assert set(results["visa"]) == {"0-shot", "1-shot"}
    for setting, metrics in results["mvtec"].items():
        assert results["visa"][setting] == pytest.approx(metrics)


def test_profile_is_evaluated_with_its_thresholds(tiny_bundle, tmp_path):
    from winclip.calibration.profiles.setup import calibrate

    data = tmp_path / "line"
    assert invoke("prepare", data, "--source", "textile", "--per-class", "6", "--references", "8").exit_code == 0
    detector = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    calibration = calibrate(detector, data / "textile" / "reference", shots=2, false_alarm_rate=0.2)
    detector.to_profile(calibration.record).save(tmp_path / "profile")
    out = tmp_path / "out"
    result = invoke(tiny_bundle, "--dataset", data, "--profile", tmp_path / "profile", "--out", out, "--save-scores")
    assert result.exit_code == 0, result.output
    (cat,) = json.loads((out / "results.json").read_text())["categories"]
    (run,) = cat["runs"]
    assert run["setting"] == "profile" and run["shots"] == 2 and len(run["references"]) == 2
    rows, scores, maps = _saved(out / "scores", "textile", "profile")
    labels = np.array([r["label"] == "1" for r in rows])
    image = run["thresholds"]["image"]
    assert image["threshold"] == pytest.approx(detector.threshold)
    flagged = scores >= detector.threshold
    assert image["true_positives"] == np.sum(flagged & labels) and image["false_positives"] == np.sum(flagged & ~labels)
    assert "profile thresholds on textile: image threshold" in result.output
    refused = invoke(tiny_bundle, "--dataset", data, "--profile", tmp_path / "profile", "--shots", "1")
    assert refused.exit_code != 0 and "drop --shots" in refused.output


def test_each_evaluation_loads_the_bundle_once(tiny_bundle, tmp_path, monkeypatch):
    """Two categories, and a line profile: the bundle (its checksums read through) is loaded once per run."""
    from winclip.calibration.profiles.setup import calibrate
    from winclip.runtime.bundle import Bundle

    synthetic = tmp_path / "synthetic"  # 8 normals to calibrate a profile from (2 for the memory, 6 held out)
    assert invoke("synthesize", synthetic, "--train", "8", "--test-good", "2", "--per-defect", "1").exit_code == 0
    detector = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    calibration = calibrate(detector, synthetic / "textile" / "train" / "good", shots=2, false_alarm_rate=0.5)
    detector.to_profile(calibration.record).save(tmp_path / "profile")
    real_load, loads = Bundle.load, []

    def counted(cls, root, *args, **kwargs):
        loads.append(Path(root))
        return real_load(root, *args, **kwargs)

    monkeypatch.setattr(Bundle, "load", classmethod(counted))
    both = invoke(tiny_bundle, "--dataset", synthetic, *OBJECTS, "--shots", "0", "--out", tmp_path / "both",
                  "--provider", "cpu")
    assert both.exit_code == 0, both.output
    assert len(json.loads((tmp_path / "both" / "results.json").read_text())["categories"]) == 2
    assert loads == [Path(tiny_bundle)]
    loads.clear()
    profiled = invoke(tiny_bundle, "--dataset", synthetic, "--categories", "textile", "--profile", tmp_path / "profile",
                      "--out", tmp_path / "profiled", "--provider", "cpu")
    assert profiled.exit_code == 0, profiled.output
    assert json.loads((tmp_path / "profiled" / "results.json").read_text())["categories"][0]["runs"][0]["setting"] == \
        "profile"
    assert loads == [Path(tiny_bundle)]


def test_cli_refusals_are_one_line(tiny_bundle, synthetic, tmp_path):
    not_ours = tmp_path / "notes"
    not_ours.mkdir()
    (not_ours / "keep.txt").write_text("mine")
    for args, said in [
        (["--dataset", synthetic, "--shots", "one"], "expected shot counts"),
        (["--dataset", synthetic, "--categories", "bottle"], "no category 'bottle'"),
        (["--dataset", tmp_path / "missing"], "data set folder not found"),
        (["--dataset", synthetic, "--save-scores"], "--save-scores needs --out"),
        (["--dataset", synthetic, "--object", "textile"], "expected CATEGORY=OBJECT NAME"),
        (["--dataset", synthetic, "--out", not_ours, "--force"], "is not one of this command's outputs"),
    ]:
        result = invoke(tiny_bundle, *args)
        assert result.exit_code != 0 and said in result.output, (args, result.output)
    assert (not_ours / "keep.txt").read_text() == "mine"


def test_console_script_help():
    for args in ([], ["run"], ["prepare"], ["synthesize"]):
        proc = run_cli("winclip-eval", *args, "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
    assert "--save-scores" in run_cli("winclip-eval", "run", "--help").stdout


def _evaluation(layout, weights):
    from winclip.calibration.evaluation.evaluate import CategoryResult, EvalOptions, Evaluation, Run

    runs = [Run("0-shot", 0, None, [], {"image_auroc": 0.5, "image_ap": 0.5, "image_f1_max": 0.6, "pixel_auroc": None,
                                        "pixel_pro": None, "pixel_f1_max": None}, np.zeros(2), {}, 0.01)]
    cat = CategoryResult("bottle", "bottle", ["a.png", "b.png"], np.array([0, 1]), ["good", "broken"], False, runs)
    bundle = {"name": "ViT-B-16+", "open_clip_model": "ViT-B-16-plus-240", "weights": weights}
    return Evaluation(Path("/data"), layout, (240, 240), bundle,
                      {"precision": "fp32", "file": "visual.onnx", "provider": "CPU"}, [cat], [], EvalOptions())


def test_the_papers_row_stands_beside_ours_only_for_the_papers_weights():
    from winclip.calibration.evaluation.report import markdown, table_rows

    paper = _evaluation("mvtec", {"kind": "tag", "tag": "laion400m_e31", "sha256": "0" * 64})
    rows = [r for r in table_rows(paper) if r["category"].startswith("paper")]
    assert len(rows) == 1 and rows[0]["image_auroc"] == pytest.approx(0.918)  # WinCLIP 0-shot on MVTec-AD, Table 1
    assert "| paper (WinCLIP" in markdown(paper) and "WARNING" not in markdown(paper)
    visa = _evaluation("visa", {"kind": "tag", "tag": "laion400m_e31", "sha256": "0" * 64})
    assert [r for r in table_rows(visa) if r["category"].startswith("paper")][0]["image_auroc"] == pytest.approx(0.781)
    for weights, warning in (({"kind": "none"}, "RANDOM WEIGHTS"), ({"kind": "file", "file": "w.pt", "sha256": "ab" * 32},
                                                                    "cannot identify as pretrained")):
        text = markdown(_evaluation("mvtec", weights))
        assert "| paper" not in text and warning in text
    assert "| paper" not in markdown(_evaluation("folder", {"kind": "tag", "tag": "laion400m_e31"}))
