"""The WinCLIP+ few-shot memory: window and patch features of K normal images.

A memory is only meaningful for the graph that computed it (another engine,
even the int8 copy of the same model, gives other vectors) and the geometry it
was computed with, so it carries a `MemoryKey` and refuses to be used, or
loaded, under any other. Saved as plain .npy arrays with their sha256.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from winclip.runtime.bundle import NPY_HEADER_MAX_BYTES, npy_header, parse_npy, read_checked, resolve_inside
from winclip.runtime.contract import IMAGE_EMBEDDING, PATCH_FEATURES, window_output_name
from winclip.runtime.defaults import MAX_MEMORY_BYTES, MEMORY_MAX_SHOTS
from winclip.runtime.errors import BundleError
from winclip.runtime.validation import Node, SchemaError


class FewShotMemoryError(BundleError):
    """A memory that does not fit the detector or whose files fail their check."""


@dataclass(frozen=True)
class MemoryKey:
    """What a memory is valid for."""

    graph_sha256: str
    precision: str
    object_name: str
    scales: tuple[int, ...]
    stride: int
    patch_layer: int
    patch_ln_post: bool

    def to_json(self) -> dict:
        return {**asdict(self), "scales": list(self.scales)}

    @classmethod
    def from_json(cls, node: Node) -> "MemoryKey":
        return cls(graph_sha256=node.sha256("graph_sha256"), precision=node.str("precision", max_len=16),
                   object_name=node.str("object_name", max_len=200),
                   scales=tuple(node.ints("scales", 1, 8, 1, 1024)), stride=node.int("stride", 1, 1024),
                   patch_layer=node.int("patch_layer", 1, 1024), patch_ln_post=node.bool("patch_ln_post"))

    def mismatch(self, other: "MemoryKey") -> str | None:
        """How `other` differs from this key, in words, or None."""
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                what = {"graph_sha256": "engine graph", "object_name": "object"}.get(name, name.replace("_", " "))
                if name == "graph_sha256":
                    mine, theirs = mine[:12] + "...", theirs[:12] + "..."
                return f"it was made with {what} {mine!r}, this detector uses {theirs!r}"
        return None


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class FewShotMemory:
    """Unit feature vectors of K normal images, pooled over images (no positions)."""

    windows: dict[int, np.ndarray]  # scale -> (K * n_windows, D) float32
    patches: np.ndarray  # (K * n_patches, C) float32
    shots: int
    key: MemoryKey
    # past a cap (coreset.py), per part: rows offered, rows kept, covering radius; None while every row is kept
    selection: dict | None = None

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], key: MemoryKey) -> "FewShotMemory":
        """From the graph's raw outputs for K normal images."""
        return cls.from_batches([outputs], key)

    @classmethod
    def from_batches(cls, batches: Iterable[dict[str, np.ndarray]], key: MemoryKey) -> "FewShotMemory":
        """From the graph's raw outputs for K normal images, one batch of images after another.

        Each batch is reduced to the unit vectors the scorer reads (windows of each
        scale, patch features) and dropped before the next one is taken, so a lazy
        iterable (a generator that runs the engine) never has two batches' raw
        outputs alive at once. ValueError when there is no image.
        """
        names = {**{k: window_output_name(k) for k in key.scales}, PATCH_FEATURES: PATCH_FEATURES}
        rows: dict = {part: [] for part in names}
        shots = 0
        for outputs in batches:
            for part, name in names.items():
                x = unit_rows(outputs[name])  # (B, N, D) -> (B * N, D)
                rows[part].append(x.reshape(-1, x.shape[-1]))
            shots += int(outputs[IMAGE_EMBEDDING].shape[0])
            del outputs  # before the next batch is computed
        if not shots:
            raise ValueError("a few-shot memory needs at least one normal image")
        pooled = {part: np.ascontiguousarray(np.concatenate(r) if len(r) > 1 else r[0]) for part, r in rows.items()}
        return cls(windows={k: pooled[k] for k in key.scales}, patches=pooled[PATCH_FEATURES], shots=shots, key=key)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"windows_{k}": v for k, v in self.windows.items()}, "patches": self.patches}

    def joined(self, other: "FewShotMemory") -> "FewShotMemory":
        """This memory and another one of the same key, rows of both (the other's after this one's)."""
        problem = self.key.mismatch(other.key)
        if problem:
            raise FewShotMemoryError(f"the memories cannot be joined: {problem}")
        return FewShotMemory(windows={k: np.concatenate([v, other.windows[k]]) for k, v in self.windows.items()},
                             patches=np.concatenate([self.patches, other.patches]), shots=self.shots + other.shots,
                             key=self.key, selection=self.selection)

    def capped(self, max_shots: int, rows_per_image: dict[str, int]) -> "FewShotMemory":
        """At most `max_shots` images' worth of rows per part, chosen by greedy k-center where there are more."""
        from winclip.runtime.coreset import k_center

        parts, selection = {}, dict(self.selection or {})
        for part, rows in self.arrays().items():
            cap = max_shots * rows_per_image[part]
            if rows.shape[0] <= cap:
                parts[part] = rows
                continue
            chosen = k_center(rows, cap)
            parts[part] = np.ascontiguousarray(rows[chosen.kept])
            selection[part] = {"offered": int(rows.shape[0]), "kept": int(cap), "radius": round(chosen.radius, 6)}
        return FewShotMemory(windows={k: parts[f"windows_{k}"] for k in self.windows}, patches=parts["patches"],
                             shots=self.shots, key=self.key, selection=selection or None)

    def save(self, folder: Path, prefix: str = "memory") -> dict:
        """Write the arrays as FOLDER/<prefix>-<part>.npy; returns the JSON record that load() takes."""
        total = sum(a.shape[0] * a.shape[1] * 4 for a in self.arrays().values())
        if total > MAX_MEMORY_BYTES:  # never write a profile that no box would load
            raise FewShotMemoryError(f"this memory takes {total:,} bytes, more than the {MAX_MEMORY_BYTES:,} a line "
                                     f"profile may hold: use at most {MEMORY_MAX_SHOTS} normal images")
        files = {}
        for part, array in self.arrays().items():
            name = f"{prefix}-{part.replace('_', '-')}.npy"
            np.save(folder / name, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
            data = (folder / name).read_bytes()
            files[part] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "shape": list(array.shape)}
        record = {"shots": self.shots, "key": self.key.to_json(), "arrays": files}
        if self.selection:
            record["selection"] = {"method": "k-center", "parts": self.selection}
        return record

    @classmethod
    def load(cls, folder: Path, record: dict, where: str = "memory") -> "FewShotMemory":
        """Read a saved memory; each array is parsed from the bytes whose sha256 was checked."""
        try:
            node = Node(record, where)
            key = MemoryKey.from_json(node.node("key"))
            shots = node.int("shots", 1, 1 << 16)
            parts = node.node("arrays")
            selected = node.has("selection")  # a capped memory: fewer rows than its images gave
            names = [*(f"windows_{k}" for k in key.scales), "patches"]
            entries = {part: parts.node(part) for part in names}
            shapes = {part: tuple(entry.ints("shape", 2, 2, 1, 1 << 24)) for part, entry in entries.items()}
            total = sum(shape[0] * shape[1] * 4 for shape in shapes.values())  # float32, before a byte is read
            if total > MAX_MEMORY_BYTES:
                raise SchemaError(f"{where} arrays would take {total:,} bytes, more than the {MAX_MEMORY_BYTES:,} a "
                                  f"memory may have (the most winclip-calibrate and teaching ever keep)")
            arrays = {}
            for part, entry in entries.items():
                shape = shapes[part]
                name = f"{where} array {entry.raw('file')}"
                declared, _ = npy_header(resolve_inside(folder, entry.file("file"), "line profile",
                                                        FewShotMemoryError), name)
                if declared != shape:  # the file's own header, read alone: a huge file is refused unread
                    raise SchemaError(f"{name} declares shape {list(declared)}, the record says {list(shape)}")
                data = read_checked(folder, entry.file("file"), entry.sha256("sha256"),
                                    max_bytes=shape[0] * shape[1] * 4 + NPY_HEADER_MAX_BYTES, what="line profile",
                                    error=FewShotMemoryError)
                arrays[part] = parse_npy(data, name,
                                         lambda s, want=shape: None if s == want else f"the record says {list(want)}",
                                         dtypes=("float32",))
                if (not selected and arrays[part].shape[0] % shots) or not np.isfinite(arrays[part]).all():
                    raise SchemaError(f"{where} array {part} does not hold finite vectors for {shots} images")
        except (SchemaError, BundleError) as exc:
            raise FewShotMemoryError(str(exc)) from None
        windows = {k: arrays[f"windows_{k}"] for k in key.scales}
        selection = record["selection"].get("parts") if selected and isinstance(record["selection"], dict) else None
        return cls(windows=windows, patches=arrays["patches"], shots=shots, key=key, selection=selection)
