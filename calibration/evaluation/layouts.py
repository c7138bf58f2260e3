"""Labelled image sets that winclip-eval reads: MVTec-AD, VisA and a line's own `folder` layout.

Each reader lists files only (no image is decoded here) and returns one
`Category` per object: the normal images few-shot references are drawn from and
the labelled test images with their masks. What cannot be used (a defect
image without its mask, a CSV row naming a missing file, a category with
nothing to test) is skipped with a one-line reason, so the other images and
categories are still evaluated.

- mvtec:  <cat>/train/good/, <cat>/test/<defect>/, <cat>/ground_truth/<defect>/<name>_mask.png
- visa:   split_csv/1cls.csv (object, split, label, image, mask; paths relative to the root)
- folder: good/, one folder per defect kind, optional masks/<defect>/<name>.png (or <name>_mask.png) and
          reference/ (normal images for the few-shot memory); the root itself or one such folder per category
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from winclip.runtime.defaults import MAX_JSON_BYTES as MAX_CSV_BYTES
from winclip.runtime.errors import WinclipError
from winclip.runtime.files import FileRefused, read_regular
from winclip.runtime.images import IMAGE_SUFFIXES, ImageReadError, display_path, list_images
from winclip.runtime.labelled import GOOD, MASKS, REFERENCE
from winclip.runtime.labelled import RESERVED as FOLDER_RESERVED  # every other sub-folder is a defect kind

LAYOUTS = ("mvtec", "visa", "folder")
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
# A folder-layout category without reference/ lends this many normal images per shot of the
# largest shot count to the reference pool (at most half of good/), so seeds draw different sets.
POOL_PER_SHOT = 2
POOL_SPLIT_SEED = 0


class LayoutError(WinclipError):
    """A data set that cannot be read at all, with a one-line reason."""


@dataclass
class Sample:
    """One labelled test image (and its mask, where the data set has masks)."""

    path: Path
    label: int  # 1 = defective
    defect: str  # "good" or the defect kind
    mask: Path | None = None  # None for good images (no defect pixels) and where no masks exist


@dataclass
class Category:
    name: str  # as the data set names it (a folder name, VisA's object column)
    references: list[Path]  # normal images the few-shot memory is drawn from (never tested)
    test: list[Sample]
    has_masks: bool  # pixel metrics are possible
    skipped: list[str] = field(default_factory=list)  # one line per image left out, and why
    note: str = ""  # how the references were chosen, where that is not the data set's own split

    @property
    def problem(self) -> str | None:
        """Why this category cannot be evaluated at all, or None."""
        if not self.test:
            return "no test images"
        if not any(s.label for s in self.test):
            return "no defective test images"
        if not any(not s.label for s in self.test):
            return "no good test images"
        return None


def detect_layout(root: Path) -> str:
    """The layout of a data set root, when only one fits; LayoutError otherwise."""
    if not root.is_dir():
        raise LayoutError(f"data set folder not found: {display_path(root)}")
    found = []
    if (root / VISA_CSV).is_file():
        found.append("visa")
    subdirs = _subdirs(root)
    if any((d / "train").is_dir() or (d / "ground_truth").is_dir() for d in subdirs):
        found.append("mvtec")
    if (root / GOOD).is_dir() or any((d / GOOD).is_dir() for d in subdirs):
        found.append("folder")
    if len(found) == 1:
        return found[0]
    if not found:
        raise LayoutError(f"{display_path(root)} is not a data set this tool reads: expected <category>/train/good "
                          f"(MVTec-AD), {VISA_CSV} (VisA) or good/ beside defect folders (folder)")
    raise LayoutError(f"{display_path(root)} looks like more than one layout ({', '.join(found)}): pass --layout")


def read_dataset(root: Path, layout: str, max_shots: int = 0) -> list[Category]:
    """Every category of the data set, sorted by name; LayoutError if the set itself is unreadable."""
    reader = {"mvtec": _mvtec, "visa": _visa, "folder": _folder}[layout]
    return sorted(reader(root, max_shots), key=lambda c: c.name)


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as exc:
        raise LayoutError(f"cannot read {display_path(root)}: {exc.strerror or exc}") from None


@dataclass
class FolderRoles:
    """What the sub-folders of a folder-layout category (or a --labelled folder) are: one rule for every reader."""

    good: Path
    reference: Path | None  # normal images for the few-shot memory, never tested
    masks: Path | None  # masks/<defect>/<name>.png
    defects: list[Path]  # every other sub-folder: one kind of defect each


def folder_roles(folder: Path) -> FolderRoles:
    """The roles of `folder`'s sub-folders (hidden ones are ignored)."""
    kinds = [d for d in _subdirs(folder) if d.name not in FOLDER_RESERVED]
    return FolderRoles(folder / GOOD, folder / REFERENCE if (folder / REFERENCE).is_dir() else None,
                       folder / MASKS if (folder / MASKS).is_dir() else None, kinds)


def inside(root: Path, path: Path) -> bool:
    """Whether `path` (after symlinks) lies inside the data set's root: nothing outside it is ever read."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _images(folder: Path, skipped: list[str], root: Path | None = None) -> list[Path]:
    """Image files under a folder (none when it is missing); unreadable sub-folders are noted, and so are
    files that lead outside the data set's root (a symlink out)."""
    if not folder.is_dir():
        return []
    try:
        paths, problems = list_images(folder)
    except ImageReadError as exc:
        skipped.append(str(exc))
        return []
    skipped += problems
    if root is None:
        return paths
    kept = [p for p in paths if inside(root, p)]
    skipped += [f"{display_path(p)}: leads outside the data set" for p in paths if not inside(root, p)]
    return kept


def _mask_for(folder: Path, stem: str, root: Path) -> Path | None:
    """The first existing <stem>_mask.<suffix> or <stem>.<suffix> in the folder, inside the data set."""
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            path = folder / f"{name}{suffix}"
            if path.is_file() and inside(root, path):
                return path
    return None


def _with_masks(kind: Path, mask_dir: Path, skipped: list[str], root: Path) -> list[Sample]:
    """The defect images under `kind`, each with its mask at the same relative place under `mask_dir`."""
    samples = []
    for path in _images(kind, skipped, root):
        mask = _mask_for(mask_dir / path.relative_to(kind).parent, path.stem, root)
        if mask is None:
            skipped.append(f"{display_path(path)}: no mask in {display_path(mask_dir)}")
        else:
            samples.append(Sample(path, 1, kind.name, mask))
    return samples


def _mvtec(root: Path, max_shots: int) -> list[Category]:
    categories = []
    for cat in _subdirs(root):
        skipped: list[str] = []
        references = _images(cat / "train" / GOOD, skipped, root)
        test = [Sample(p, 0, GOOD) for p in _images(cat / "test" / GOOD, skipped, root)]
        for kind in (_subdirs(cat / "test") if (cat / "test").is_dir() else []):
            if kind.name != GOOD:
                test += _with_masks(kind, cat / "ground_truth" / kind.name, skipped, root)
        categories.append(Category(cat.name, references, test, has_masks=True, skipped=skipped))
    return categories


def _visa(root: Path, max_shots: int) -> list[Category]:
    path = root / VISA_CSV
    try:
        text = read_regular(path, MAX_CSV_BYTES, "split file").decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LayoutError(f"{display_path(path)} lacks the column(s) {', '.join(missing)} "
                              f"(expected {', '.join(VISA_COLUMNS)})")
        rows = list(reader)
    except FileRefused as exc:
        raise LayoutError(str(exc)) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LayoutError(f"cannot read {display_path(path)}: {getattr(exc, 'strerror', None) or exc}") from None
    by_object: dict[str, Category] = {}
    for line, row in enumerate(rows, start=2):
        name = (row["object"] or "").strip()
        if not name:
            continue
        cat = by_object.setdefault(name, Category(name, [], [], has_masks=True))
        where = f"{VISA_CSV} line {line}"
        image = root / (row["image"] or "").strip()
        label, split = (row["label"] or "").strip(), (row["split"] or "").strip()
        if label not in ("normal", "anomaly") or split not in ("train", "test"):
            cat.skipped.append(f"{where}: split {split!r} / label {label!r} not understood")
        elif not inside(root, image):  # an absolute path, '..', a symlink out: never opened, never shown
            cat.skipped.append(f"{where}: image path {(row['image'] or '').strip()[:80]!r} leads outside the data set")
        elif not (row["image"] or "").strip() or not image.is_file():
            cat.skipped.append(f"{where}: image {display_path(image)} not found")
        elif split == "train":
            if label == "normal":
                cat.references.append(image)
            else:
                cat.skipped.append(f"{where}: an anomalous image in the train split is not used")
        elif label == "normal":
            cat.test.append(Sample(image, 0, GOOD))
        else:
            mask = root / (row["mask"] or "").strip()
            if not inside(root, mask):
                cat.skipped.append(f"{where}: mask path {(row['mask'] or '').strip()[:80]!r} leads outside the data set")
            elif not (row["mask"] or "").strip() or not mask.is_file():
                cat.skipped.append(f"{where}: no mask for {display_path(image)} ({display_path(mask)} not found)")
            else:
                cat.test.append(Sample(image, 1, "anomaly", mask))
    if not by_object:
        raise LayoutError(f"{display_path(path)} lists no images")
    return list(by_object.values())


def _folder(root: Path, max_shots: int) -> list[Category]:
    roots = [root] if (root / GOOD).is_dir() else [d for d in _subdirs(root) if (d / GOOD).is_dir()]
    categories = []
    for cat in roots:
        skipped: list[str] = []
        roles = folder_roles(cat)
        goods = _images(roles.good, skipped, root)
        has_masks = roles.masks is not None
        test: list[Sample] = []
        for kind in roles.defects:
            test += (_with_masks(kind, roles.masks / kind.name, skipped, root) if has_masks
                     else [Sample(p, 1, kind.name) for p in _images(kind, skipped, root)])
        note = ""
        if roles.reference is not None:
            references = _images(roles.reference, skipped, root)
        else:
            references, goods = _split_pool(goods, max_shots)
            if references:
                note = (f"no reference/ folder: {len(references)} of good/ held out as the reference pool "
                        f"(seed {POOL_SPLIT_SEED}), the rest tested")
        test = [Sample(p, 0, GOOD) for p in goods] + test
        name = cat.resolve().name if cat == root else cat.name
        categories.append(Category(name, references, test, has_masks, skipped, note))
    return categories


def _split_pool(goods: list[Path], max_shots: int) -> tuple[list[Path], list[Path]]:
    """(reference pool, test goods): a fixed, seeded part of good/ set aside for the few-shot memory."""
    size = min(POOL_PER_SHOT * max_shots, len(goods) // 2)
    if size <= 0:
        return [], goods
    order = list(range(len(goods)))
    random.Random(POOL_SPLIT_SEED).shuffle(order)
    pool = set(order[:size])
    return [goods[i] for i in sorted(pool)], [g for i, g in enumerate(goods) if i not in pool]
