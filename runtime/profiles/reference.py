"""The reference set of a line profile: graph outputs of normal images that are not in its memory.

Scoring them against a memory gives the normal score distribution: the image and
pixel thresholds for a false-alarm rate are read from it, and the live loop's
drift watch compares what it sees with it. Keeping the graph's outputs (not the
images) makes a new memory's thresholds a matter of numpy, with no engine call:
a taught part changes a profile in well under a second.

Two groups: `held_out` (the normals winclip-calibrate scored, up to
REFERENCE_MAX_HELD_OUT) and `taught` (parts added later, the newest
REFERENCE_MAX_TAUGHT). Saved as .npy files with their sha256, as the memory is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from winclip.runtime.bundle import NPY_HEADER_MAX_BYTES, parse_npy, read_checked
from winclip.runtime.defaults import MAX_IMAGE_ROWS_BYTES, REFERENCE_MAX_HELD_OUT, REFERENCE_MAX_TAUGHT
from winclip.runtime.errors import BundleError
from winclip.runtime.postprocess import upsample_map
from winclip.runtime.validation import Node, SchemaError


# What winclip-calibrate and teaching keep, at most: 150 images' graph outputs (263 MB for ViT-B-16+).
MAX_REFERENCE_BYTES = (REFERENCE_MAX_HELD_OUT + REFERENCE_MAX_TAUGHT) * MAX_IMAGE_ROWS_BYTES


class ReferenceSetError(BundleError):
    """A reference set whose files fail their check or do not fit the detector."""


@dataclass
class ReferenceSet:
    """Raw graph outputs of n normal images, their sizes (for pixel maps at frame resolution) and names."""

    outputs: dict[str, np.ndarray]  # output name -> (n, ...) float32
    sizes: np.ndarray  # (n, 2) int: height, width
    names: list[str] = field(default_factory=list)  # where each came from, for people

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @classmethod
    def empty(cls, like: "ReferenceSet") -> "ReferenceSet":
        return cls({k: v[:0] for k, v in like.outputs.items()}, like.sizes[:0], [])

    @classmethod
    def from_images(cls, detector, images: list[np.ndarray], names: list[str], batch: int = 4,
                    progress=None) -> "ReferenceSet":
        """Run the graph over the images (one session call per batch) and keep its outputs."""
        chunks = []
        for i in range(0, len(images), batch):
            chunks.append(detector.embed(images[i:i + batch])[0])
            if progress is not None:
                progress(len(images[i:i + batch]))
        outputs = {name: np.concatenate([c[name] for c in chunks]).astype(np.float32) for name in detector.output_names}
        sizes = np.array([np.shape(im)[:2] for im in images], dtype=np.int64).reshape(-1, 2)
        return cls(outputs, sizes, list(names))

    def joined(self, other: "ReferenceSet") -> "ReferenceSet":
        return ReferenceSet({k: np.concatenate([v, other.outputs[k]]) for k, v in self.outputs.items()},
                            np.concatenate([self.sizes, other.sizes]), self.names + other.names)

    def newest(self, count: int) -> "ReferenceSet":
        """The last `count` images (all when there are fewer)."""
        start = max(0, len(self) - count)
        return ReferenceSet({k: v[start:] for k, v in self.outputs.items()}, self.sizes[start:], self.names[start:])

    def score(self, detector, memory, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and per-image maximum of the pixel map (at each image's size) against `memory`,
        exactly as the detector scores a frame; no engine call."""
        shapes = detector.bundle.manifest.output_shapes()
        for name, array in self.outputs.items():
            if list(array.shape[1:]) != list(shapes[name][1:]):
                raise ReferenceSetError(f"reference output {name} has shape {list(array.shape[1:])} per image; this "
                                     f"engine gives {list(shapes[name][1:])}")
        scores, peaks = [], []
        for i in range(0, len(self), batch):
            part = {k: v[i:i + batch] for k, v in self.outputs.items()}
            result = detector.scorer(part, memory)
            scores.append(result.image_score)
            for grid, (h, w) in zip(result.grid_map, self.sizes[i:i + batch]):
                peaks.append(float(upsample_map(grid, int(h), int(w)).max()))
        return (np.concatenate(scores) if scores else np.zeros(0)), np.array(peaks, dtype=np.float64)

    def save(self, folder: Path, prefix: str) -> dict:
        """Write FOLDER/<prefix>-<output>.npy; returns the record `load` takes."""
        files = {}
        for name, array in self.outputs.items():
            file = f"{prefix}-{name.replace('_', '-')}.npy"
            np.save(folder / file, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
            files[name] = {"file": file, "sha256": hashlib.sha256((folder / file).read_bytes()).hexdigest(),
                           "shape": list(array.shape)}
        return {"count": len(self), "sizes": self.sizes.tolist(), "names": list(self.names), "arrays": files}

    @classmethod
    def load(cls, folder: Path, record: dict, output_names: list[str], where: str) -> "ReferenceSet":
        """Read a saved group; every array is checked against its sha256 and shape before use."""
        try:
            node = Node(record, where)
            count = node.int("count", 0, 1 << 20)
            sizes = node.list("sizes", count, count)
            sizes = np.array([[int(v) for v in s] for s in sizes], dtype=np.int64).reshape(-1, 2)
            if count and (sizes.min() < 1 or sizes.max() > 1 << 20):
                raise SchemaError(f"{where}.sizes holds an impossible image size")
            names = node.strs("names", max_len=4096) if node.has("names") else [""] * count
            arrays, parts = {}, node.node("arrays")
            entries = {name: parts.node(name) for name in output_names}
            shapes = {name: tuple(entry.ints("shape", 2, 3, 0, 1 << 24)) for name, entry in entries.items()}
            total = sum(4 * int(np.prod(shape)) for shape in shapes.values())  # float32, before a byte is read
            if total > MAX_REFERENCE_BYTES:
                raise SchemaError(f"{where} arrays would take {total:,} bytes, more than the {MAX_REFERENCE_BYTES:,} "
                                  f"a profile's reference set may have")
            for name, entry in entries.items():
                shape = shapes[name]
                if shape[0] != count:
                    raise SchemaError(f"{where} array {name} holds {shape[0]} images, the record says {count}")
                data = read_checked(folder, entry.file("file"), entry.sha256("sha256"),
                                    max_bytes=4 * int(np.prod(shape)) + NPY_HEADER_MAX_BYTES)
                arrays[name] = parse_npy(data, f"{where} array {entry.raw('file')}",
                                         lambda s, want=shape: None if s == want else f"the record says {list(want)}",
                                         dtypes=("float32",))
                if not np.isfinite(arrays[name]).all():
                    raise SchemaError(f"{where} array {name} holds values that are not finite")
        except (SchemaError, BundleError, TypeError, ValueError) as exc:
            raise ReferenceSetError(str(exc)) from None
        return cls(arrays, sizes, list(names))


def reference_writer(held_out: ReferenceSet, taught: ReferenceSet | None, scores: np.ndarray, peaks: np.ndarray):
    """What a profile folder gets for its reference set: a function that writes the arrays into a folder and
    returns the profile record's "reference" entry (with the reference's scores under that profile's memory)."""

    def write(folder: Path) -> dict:
        record = {"held_out": held_out.save(folder, "reference-held-out"),
                  "image_scores": [round(float(s), 6) for s in scores],
                  "map_max": [round(float(s), 6) for s in peaks]}
        if taught is not None and len(taught):
            record["taught"] = taught.save(folder, "reference-taught")
        return {"reference": record}

    return write
