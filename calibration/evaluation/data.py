"""Evaluation sets built from the real images that ship in PyPI packages (calibration.datasets).

- `prepare`: the ELPV solar cells and the simulated textiles in the `folder` layout
  (image labels only: neither package has defect masks).
- `synthesize`: a small MVTec-AD-layout set with pixel masks: synthetic defects
  (scratches, blobs, colour spots) painted on real normal images, so the pixel
  metrics have ground truth to be checked against.

Both write their folder atomically (runtime.atomic.staged_folder).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np

from winclip.calibration.evaluation.datasets import elpv_labels, textile_dir
from winclip.calibration.evaluation.layouts import GOOD
from winclip.runtime.atomic import staged_folder, write_atomic
from winclip.runtime.images import png_bytes
from winclip.runtime.images import read_image

PREPARE_SOURCES = ("elpv", "textile")
ELPV_CATEGORY, TEXTILE_CATEGORY = "solar_cell", "textile"
DEFECT_KINDS = ("scratch", "blob", "spot")
PREPARED_MARKER = "PREPARED.txt"  # names what a folder holds, and marks it as ours for --force


# --sample: a small set per object, for the README's quick start (minutes, not hours, on 2 cores).
# good/: 24 = 4 memory images + 20 held-out normals, what winclip-calibrate needs to resolve a 5 %
# false-alarm rate (ceil(1 / 0.05) = 20); reference/: 8, two draws' worth of 4 shots for winclip-eval's
# few-shot memory; 6 of each defect kind, so image AUROC compares 24 goods with 6-12 defects.
SAMPLE_GOOD, SAMPLE_REFERENCES, SAMPLE_PER_DEFECT = 24, 8, 6


def _ours(folder: Path) -> bool:
    return (folder / PREPARED_MARKER).is_file()


def _pick(paths: list[Path], n: int | None, rng: random.Random) -> list[Path]:
    paths = sorted(paths)
    return paths if n is None or n >= len(paths) else sorted(rng.sample(paths, n))


def _copy_all(paths: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, folder / path.name)


def _lay_out(root: Path, classes: dict[str, list[Path]], per_class: int | None, references: int,
            rng: random.Random, goods: int | None = None) -> dict[str, int]:
    """Copy up to `per_class` images of each class (`goods` of the good one, when given) into root/<class>/;
    `references` extra goods go to reference/."""
    counts = {}
    for folder, paths in classes.items():
        extra = references if folder == GOOD else 0
        limit = goods if folder == GOOD and goods is not None else per_class
        picked = _pick(paths, limit + extra if limit else None, rng)
        if folder == GOOD:
            _copy_all(picked[:references], root / "reference")
            counts["reference"], picked = len(picked[:references]), picked[references:]
        _copy_all(picked, root / folder)
        counts[folder] = len(picked)
    return counts


def prepare(out: Path, sources=PREPARE_SOURCES, per_class: int | None = None, references: int = 16,
            seed: int = 0, force: bool = False, sample: bool = False) -> dict:
    """Lay out the packaged real images in the folder layout under OUT; returns the counts written.

    OUT/solar_cell/{good,defect,reference}/: ELPV defect probability 0 is good, 1.0 a
    defect; the uncertain 1/3 and 2/3 are left out. OUT/textile/{good,local,global,
    reference}/: nominal, local and global defects. `references` normal images of each
    go to reference/ (the few-shot pool) instead of good/. `sample`: the quick start's small set
    (SAMPLE_GOOD goods, SAMPLE_REFERENCES references, SAMPLE_PER_DEFECT of each defect kind).
    """
    rng = random.Random(seed)
    goods = None
    if sample:
        goods, references, per_class = SAMPLE_GOOD, SAMPLE_REFERENCES, SAMPLE_PER_DEFECT
    summary: dict = {}
    with staged_folder(out, force, _ours) as tmp:
        if "elpv" in sources:
            labels = elpv_labels()
            classes = {GOOD: [p for p, prob, _ in labels if prob == 0.0],
                       "defect": [p for p, prob, _ in labels if prob == 1.0]}
            summary[ELPV_CATEGORY] = _lay_out(tmp / ELPV_CATEGORY, classes, per_class, references, rng, goods)
            summary[ELPV_CATEGORY]["left out (probability 1/3, 2/3)"] = len(labels) - sum(map(len, classes.values()))
        if "textile" in sources:
            classes = {folder: list(textile_dir(kind).glob("*.jpg"))
                       for folder, kind in ((GOOD, "nominal"), ("local", "local"), ("global", "global"))}
            summary[TEXTILE_CATEGORY] = _lay_out(tmp / TEXTILE_CATEGORY, classes, per_class, references, rng, goods)
        lines = [f"{cat}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) for cat, counts in summary.items()]
        (tmp / PREPARED_MARKER).write_text(
            "winclip-eval prepare: real images from the elpv-dataset and conformal-clip-data packages in the "
            f"folder layout (seed {seed}{', the quick start sample' if sample else ''}); no pixel masks\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return summary


# ---- synthetic defects on real images (MVTec-AD layout, with masks)

def _contrast(image: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """A colour far from the image's mean under the mask, so the defect is visible on any background."""
    mean = cv2.mean(image, mask=mask)[:3]
    return tuple(int(255 - m) if abs(255 - 2 * m) > 60 else (0 if m > 127 else 255) for m in mean)


def paint_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit BGR image with a painted defect, uint8 mask 255 where painted)."""
    image = image.copy()
    h, w = image.shape[:2]
    size = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    if kind == "scratch":
        points = rng.integers([w // 8, h // 8], [w - w // 8, h - h // 8], size=(int(rng.integers(2, 5)), 2))
        cv2.polylines(mask, [points.astype(np.int32)], False, 255, max(2, size // 60), cv2.LINE_8)
    elif kind == "blob":
        centre = tuple(int(v) for v in rng.integers([w // 4, h // 4], [3 * w // 4, 3 * h // 4]))
        axes = tuple(int(v) for v in rng.integers(size // 14, size // 7, size=2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == "spot":
        for _ in range(int(rng.integers(2, 5))):
            centre = tuple(int(v) for v in rng.integers([w // 8, h // 8], [7 * w // 8, 7 * h // 8]))
            cv2.circle(mask, centre, int(rng.integers(size // 40, size // 20) + 1), 255, -1)
    else:
        raise ValueError(f"defect kind must be one of {DEFECT_KINDS}, got {kind!r}")
    if kind == "spot":  # a saturated hue that a gray or pale part never has
        colour = tuple(int(v) for v in rng.permutation([30, 60, 230]))
    else:
        colour = _contrast(image, mask)
    paint = np.empty_like(image)
    paint[:] = colour
    if kind == "blob":  # texture, not a flat fill
        noise = rng.normal(0, 25, image.shape).astype(np.int16)
        paint = np.clip(paint.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    image[mask > 0] = paint[mask > 0]
    return image, mask


def synthetic_sources(category: str) -> list[Path]:
    """Real normal images a synthetic category is painted on."""
    if category == TEXTILE_CATEGORY:
        return sorted(textile_dir("nominal").glob("*.jpg"))
    if category == ELPV_CATEGORY:
        return sorted(p for p, prob, _ in elpv_labels() if prob == 0.0)
    raise ValueError(f"synthetic categories are {TEXTILE_CATEGORY} and {ELPV_CATEGORY}, not {category!r}")


def synthesize(out: Path, categories=(TEXTILE_CATEGORY, ELPV_CATEGORY), train: int = 4, test_good: int = 4,
               per_defect: int = 2, seed: int = 0, force: bool = False) -> dict:
    """An MVTec-AD-layout set: <cat>/train/good, <cat>/test/{good,scratch,blob,spot}, <cat>/ground_truth/..."""
    rng = np.random.default_rng(seed)
    summary = {}
    with staged_folder(out, force, _ours) as tmp:
        for category in categories:
            need = train + test_good + per_defect * len(DEFECT_KINDS)
            sources = synthetic_sources(category)
            if len(sources) < need:
                raise ValueError(f"{category} has {len(sources)} normal images, {need} are needed")
            chosen = [sources[i] for i in rng.choice(len(sources), need, replace=False)]
            root = tmp / category
            _copy_all(chosen[:train], root / "train" / GOOD)
            _copy_all(chosen[train:train + test_good], root / "test" / GOOD)
            bases = iter(chosen[train + test_good:])
            for kind in DEFECT_KINDS:
                for _ in range(per_defect):
                    path = next(bases)
                    image = read_image(path)
                    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[:, :, :3]
                    painted, mask = paint_defect(image, kind, rng)
                    for folder, name, data in ((root / "test" / kind, f"{path.stem}.png", painted),
                                               (root / "ground_truth" / kind, f"{path.stem}_mask.png", mask)):
                        folder.mkdir(parents=True, exist_ok=True)
                        write_atomic(folder / name, png_bytes(data))
            summary[category] = {"train": train, "test good": test_good, **{k: per_defect for k in DEFECT_KINDS}}
        (tmp / PREPARED_MARKER).write_text(
            "winclip-eval synthesize: synthetic defects (scratch, blob, colour spot) painted on real images from "
            f"the elpv-dataset / conformal-clip-data packages, MVTec-AD layout with masks (seed {seed})\n",
            encoding="utf-8")
    return summary
