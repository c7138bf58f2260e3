"""The engine bundle: layout, manifest schema and safe loading.

This module is the single source of truth for the bundle contract. The export
writes bundles with these names and this schema version; the runtime refuses
any bundle it cannot fully check. A bundle is data, never code: nothing is
unpickled and no file name may resolve outside the bundle directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

SCHEMA_VERSION = 1
BUNDLE_FORMAT = "winclip-edge-bundle"
MANIFEST_NAME = "manifest.json"
GRAPH_NAME = "visual.onnx"
TEXT_DIR = "text"

INPUT_NAME = "images"
IMAGE_EMBEDDING = "image_embedding"
PATCH_FEATURES = "patch_features"

# preprocessing policies this schema version knows (manifest "preprocess")
RESIZE_SQUASH = "squash"
INTERPOLATION_BICUBIC = "bicubic"
CHANNELS_RGB = "RGB"

# manifest keys every bundle must have, with their types
REQUIRED = {
    ("backbone",): dict,
    ("preprocess",): dict,
    ("preprocess", "input_size"): list,
    ("preprocess", "mean"): list,
    ("preprocess", "std"): list,
    ("grid",): list,
    ("windows",): dict,
    ("windows", "scales"): list,
    ("windows", "stride"): int,
    ("windows", "counts"): dict,
    ("graph",): dict,
    ("graph", "file"): str,
    ("graph", "inputs"): dict,
    ("graph", "outputs"): dict,
    ("text",): dict,
    ("text", "objects"): dict,
    ("scoring",): dict,
    ("scoring", "temperature"): (int, float),
    ("files",): dict,
}


class BundleError(Exception):
    """A bundle that cannot be used, with a one-line reason."""


def window_output_name(scale: int) -> str:
    return f"window_embeddings_{scale}"


def output_names(scales: list[int]) -> list[str]:
    """Graph outputs in order: image embedding, windows per scale, patch features."""
    return [IMAGE_EMBEDDING, *[window_output_name(k) for k in scales], PATCH_FEATURES]


def normalize_object_name(name: str) -> str:
    """The user's words for the object; dataset folder names use '_' for spaces."""
    cleaned = " ".join(str(name).replace("_", " ").split())
    if not cleaned:
        raise ValueError("object name is empty")
    return cleaned


def text_file_name(object_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", object_name.lower()).strip("-") or "object"
    return f"{TEXT_DIR}/{slug}.npy"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_inside(root: Path, name: str) -> Path:
    """Resolve a manifest file name, refusing anything that leaves the bundle."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or "\\" in name or any(p in ("..", "") for p in pure.parts):
        raise BundleError(f"bundle file name {name!r} is not a plain relative path")
    root_real = root.resolve()
    target = (root / pure).resolve()
    if root_real != target and root_real not in target.parents:
        raise BundleError(f"bundle file {name!r} resolves outside the bundle directory")
    return target


def _check_structure(manifest: dict) -> None:
    for path, kind in REQUIRED.items():
        node = manifest
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise BundleError(f"manifest lacks {'.'.join(path)}")
            node = node[key]
        if not isinstance(node, kind) or isinstance(node, bool):
            raise BundleError(f"manifest field {'.'.join(path)} has the wrong type ({type(node).__name__})")


@dataclass(frozen=True)
class Bundle:
    """A checked bundle directory and its manifest."""

    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: str | Path, verify_checksums: bool = True) -> "Bundle":
        root = Path(root)
        if not root.is_dir():
            raise BundleError(f"bundle directory not found: {root}")
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{root} is not a bundle: {MANIFEST_NAME} is missing")
        resolve_inside(root, MANIFEST_NAME)  # no symlink out, for the manifest too
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read {manifest_path}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{manifest_path} is not a {BUNDLE_FORMAT} manifest")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"bundle schema version {version!r} is not supported "
                f"(this winclip-edge reads version {SCHEMA_VERSION}); re-export the bundle"
            )
        _check_structure(manifest)
        bundle = cls(root, manifest)
        bundle._check_files(verify_checksums)
        return bundle

    def _check_files(self, verify_checksums: bool) -> None:
        files = self.manifest["files"]
        if not files:
            raise BundleError("manifest lists no files")
        needed = [self.graph_file, *self.manifest["text"]["objects"].values()]
        for name in needed:
            if name not in files:
                raise BundleError(f"manifest uses {name!r} but has no checksum for it")
        for name, expected in files.items():
            path = resolve_inside(self.root, name)
            if not path.is_file():
                raise BundleError(f"bundle file missing: {name}")
            if verify_checksums and sha256_file(path) != expected:
                raise BundleError(f"checksum mismatch for bundle file {name}: the bundle is corrupt or was edited")

    # --- manifest accessors (each fact read from the manifest, never re-typed)
    @property
    def graph_file(self) -> str:
        return self.manifest["graph"]["file"]

    @property
    def graph_path(self) -> Path:
        return resolve_inside(self.root, self.graph_file)

    @property
    def graph_sha256(self) -> str:
        return self.manifest["files"][self.graph_file]

    def read_graph(self) -> bytes:
        """The graph's bytes, checked against the manifest as read: what is hashed is what runs."""
        data = self.graph_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.graph_sha256:
            raise BundleError(f"checksum mismatch for bundle file {self.graph_file}: the bundle is corrupt or was edited")
        return data

    @property
    def grid(self) -> tuple[int, int]:
        g = self.manifest["grid"]
        return int(g[0]), int(g[1])

    @property
    def scales(self) -> list[int]:
        return [int(k) for k in self.manifest["windows"]["scales"]]

    @property
    def stride(self) -> int:
        return int(self.manifest["windows"]["stride"])

    @property
    def objects(self) -> list[str]:
        return list(self.manifest["text"]["objects"])

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]

    @property
    def scoring(self) -> dict:
        return self.manifest["scoring"]

    def text_prototypes(self, object_name: str) -> np.ndarray:
        """(2, D) float32: row 0 the normal prototype, row 1 the anomalous one."""
        name = normalize_object_name(object_name)
        objects = self.manifest["text"]["objects"]
        if name not in objects:
            have = ", ".join(repr(o) for o in objects) or "none"
            raise BundleError(f"bundle has no text embeddings for object {name!r}; it has: {have}")
        path = resolve_inside(self.root, objects[name])
        try:
            protos = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read text embeddings {objects[name]}: {exc}") from None
        if not isinstance(protos, np.ndarray):  # an .npz archive
            protos.close()
            raise BundleError(f"text embeddings {objects[name]} are not a single .npy array")
        if protos.ndim != 2 or protos.shape[0] != 2:
            raise BundleError(f"text embeddings {objects[name]} have shape {protos.shape}, expected (2, D)")
        return protos.astype(np.float32)
