"""Data set layouts winclip-eval reads: detection, VisA's CSV, the folder layout, and what each skips."""

import cv2
import numpy as np
import pytest

from winclip.calibration.evaluation.layouts import LayoutError, detect_layout, read_dataset


def _png(path, value=128, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(size, value, np.uint8))
    return path


def test_layouts_are_detected_only_when_unambiguous(tmp_path):
    mvtec = tmp_path / "mvtec"
    _png(mvtec / "bottle" / "train" / "good" / "000.png")
    assert detect_layout(mvtec) == "mvtec"
    visa = tmp_path / "visa"
    (visa / "split_csv").mkdir(parents=True)
    (visa / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    assert detect_layout(visa) == "visa"
    folder = tmp_path / "line"
    _png(folder / "good" / "a.png")
    assert detect_layout(folder) == "folder"
    _png(mvtec / "cable" / "good" / "a.png")  # now both an MVTec and a folder category
    with pytest.raises(LayoutError, match="more than one layout .*--layout"):
        detect_layout(mvtec)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(LayoutError, match="expected <category>/train/good"):
        detect_layout(tmp_path / "nothing")


def test_visa_csv_rows_are_read_and_mismatches_skipped(tmp_path):
    root = tmp_path / "visa"
    for name in ("candle/Data/Images/Normal/000.JPG", "candle/Data/Images/Normal/001.JPG",
                 "candle/Data/Images/Normal/002.JPG", "candle/Data/Images/Anomaly/100.JPG",
                 "candle/Data/Images/Anomaly/101.JPG", "candle/Data/Masks/Anomaly/100.png",
                 "pcb1/Data/Images/Normal/000.JPG"):
        _png(root / name)
    rows = [
        "object,split,label,image,mask",
        "candle,train,normal,candle/Data/Images/Normal/000.JPG,",
        "candle,test,normal,candle/Data/Images/Normal/001.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/100.JPG,candle/Data/Masks/Anomaly/100.png",
        "candle,test,anomaly,candle/Data/Images/Anomaly/101.JPG,candle/Data/Masks/Anomaly/101.png",  # no mask file
        "candle,test,normal,candle/Data/Images/Normal/999.JPG,",  # no image file
        "candle,test,broken,candle/Data/Images/Normal/002.JPG,",  # unknown label
        "pcb1,train,normal,pcb1/Data/Images/Normal/000.JPG,",
    ]
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    candle, pcb1 = read_dataset(root, "visa")
    assert candle.name == "candle" and pcb1.name == "pcb1"
    assert [p.name for p in candle.references] == ["000.JPG"]
    assert [(s.path.name, s.label, s.mask.name if s.mask else None) for s in candle.test] == [
        ("001.JPG", 0, None), ("100.JPG", 1, "100.png")]
    assert len(candle.skipped) == 3
    assert any("line 5" in s and "no mask" in s for s in candle.skipped)
    assert any("line 6" in s and "not found" in s for s in candle.skipped)
    assert any("line 7" in s and "'broken'" in s for s in candle.skipped)
    assert candle.problem is None and pcb1.problem == "no test images"


def test_visa_csv_without_its_columns_is_refused(tmp_path):
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,image\ncandle,a.png\n")
    with pytest.raises(LayoutError, match="lacks the column.*split, label, mask"):
        read_dataset(tmp_path, "visa")


def test_mvtec_defect_images_need_their_masks(tmp_path):
    cat = tmp_path / "screw"
    _png(cat / "train" / "good" / "000.png")
    _png(cat / "test" / "good" / "000.png")
    _png(cat / "test" / "thread" / "000.png")
    _png(cat / "test" / "thread" / "001.png")
    _png(cat / "ground_truth" / "thread" / "000_mask.png", 255)
    (screw,) = read_dataset(tmp_path, "mvtec")
    assert [(s.defect, s.path.name, s.mask and s.mask.name) for s in screw.test] == [
        ("good", "000.png", None), ("thread", "000.png", "000_mask.png")]
    assert len(screw.skipped) == 1 and "001.png: no mask" in screw.skipped[0]


def test_folder_layout_masks_references_and_a_held_out_pool(tmp_path):
    line = tmp_path / "line"
    for i in range(10):
        _png(line / "good" / f"g{i}.png")
    _png(line / "dent" / "d0.png")
    _png(line / "dent" / "d1.png")
    _png(line / "masks" / "dent" / "d0.png", 255)
    (cat,) = read_dataset(line, "folder", max_shots=2)
    assert cat.name == "line" and cat.has_masks
    assert [s.path.name for s in cat.test if s.label] == ["d0.png"] and "d1.png: no mask" in cat.skipped[0]
    # no reference/: 2 x 2 shots of good/ held out (a fixed, seeded choice), never tested
    goods = {s.path.name for s in cat.test if not s.label}
    assert len(cat.references) == 4 and len(goods) == 6 and not goods & {p.name for p in cat.references}
    assert "held out" in cat.note
    assert read_dataset(line, "folder", max_shots=2)[0].references == cat.references
    _png(line / "reference" / "r0.png")
    (cat,) = read_dataset(line, "folder", max_shots=2)
    assert [p.name for p in cat.references] == ["r0.png"] and len([s for s in cat.test if not s.label]) == 10


def test_empty_category_is_named(tmp_path):
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)
    (bottle,) = read_dataset(tmp_path, "mvtec")
    assert bottle.problem == "no test images"
