"""Real images that ship in PyPI packages (the [dev] extra): ELPV solar cells, simulated textiles.

Used by tests, benchmarks and `winclip-eval prepare` wherever no other real
images exist: no pretrained weights or public anomaly datasets can be fetched
on every machine the project is built on.
"""

from __future__ import annotations

from pathlib import Path

from winclip.runtime.errors import MissingExtra

TEXTILE_KINDS = ("nominal", "local", "global")


class DatasetMissing(MissingExtra):
    """A dataset package that is not installed."""


def elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise DatasetMissing("the ELPV images come with the elpv-dataset package: pip install elpv-dataset") from None
    return Path(elpv_dataset.__file__).parent / "data"


def elpv_labels() -> list[tuple[Path, float, str]]:
    """(image path, defect probability 0..1, cell type) for every ELPV image."""
    root = elpv_root()
    rows = []
    for line in (root / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            rows.append((root / parts[0], float(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def elpv_images(n: int, start: int = 0) -> list[Path]:
    """The n images from position `start` of the sorted ELPV images (300x300 8-bit gray)."""
    return sorted((elpv_root() / "images").glob("*.png"))[start:start + n]


def textile_dir(kind: str) -> Path:
    if kind not in TEXTILE_KINDS:
        raise ValueError(f"textile kind must be one of {TEXTILE_KINDS}, got {kind!r}")
    try:
        import conformal_clip_data as ccd
    except ImportError:
        raise DatasetMissing("the textile images come with the conformal-clip-data package: "
                             "pip install conformal-clip-data") from None
    return Path({"nominal": ccd.nominal_dir, "local": ccd.local_dir, "global": ccd.global_dir}[kind]())


def textile_images(kind: str, n: int, start: int = 0) -> list[Path]:
    """n simulated textile images (250x250 colour) of a kind: nominal, local or global defects."""
    return sorted(textile_dir(kind).glob("*.jpg"))[start:start + n]
