"""An engine bundle on disk: safe loading, checked reads, atomic manifest updates.

A bundle is data, never code: nothing is unpickled, every file name resolves
inside the bundle directory, arrays are parsed from the very bytes whose
checksum was verified, and an engine's bytes are hashed as they are read for a
session, so what runs is what was checked. The schema itself lives in
contract.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from winclip.runtime.atomic import write_atomic
from winclip.runtime.contract import MANIFEST_NAME, Engine, Manifest, normalize_object_name
from winclip.runtime.defaults import MAX_ENGINE_BYTES, MAX_TEXT_BYTES
from winclip.runtime.errors import BundleError
from winclip.runtime.files import FileRefused, not_regular, read_regular
from winclip.runtime.validation import SchemaError, plain_file_name, read_json

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20  # bytes of an engine held at a time while it is hashed or copied


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_inside(root: Path, name: str, what: str = "bundle", error=BundleError) -> Path:
    """Resolve a file name of a bundle (or a profile), refusing anything that leaves its folder."""
    try:
        plain_file_name(name, f"{what} file name")
    except SchemaError as exc:
        raise error(str(exc)) from None
    root_real = root.resolve()
    target = (root / name).resolve()
    if root_real != target and root_real not in target.parents:
        raise error(f"{what} file {name!r} resolves outside the {what} directory")
    return target


def read_checked(root: Path, name: str, sha256: str, verify: bool = True, max_bytes: int = MAX_ENGINE_BYTES,
                 what: str = "bundle", error=BundleError) -> bytes:
    """A file's bytes (a regular file of at most max_bytes, inside root), refused unless they hash to `sha256`.

    `what` names the folder in messages ("bundle", "line profile") and `error` is the class raised.
    """
    path = resolve_inside(root, name, what, error)
    try:
        data = read_regular(path, max_bytes, f"{what} file")
    except FileNotFoundError:
        raise error(f"{what} file missing: {name}") from None
    except FileRefused as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"cannot read {what} file {name}: {exc.strerror or exc}") from None
    if verify and hashlib.sha256(data).hexdigest() != sha256:
        raise error(f"checksum mismatch for {what} file {name}: the {what} is corrupt or was edited")
    return data


def stream_checked(root: Path, name: str, sha256: str, verify: bool = True, out: BinaryIO | None = None) -> str:
    """A bundle file's sha256, hashed chunk by chunk as it is read (and written to `out` when given).

    One chunk is held at a time, so a large engine costs no memory of its own.
    BundleError unless the bytes hash to `sha256` (when verifying).
    """
    path = resolve_inside(root, name)
    digest = hashlib.sha256()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise BundleError(f"bundle file missing: {name}") from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle file {name}: {exc.strerror or exc}") from None
    with fh:
        while True:
            try:
                block = fh.read(STREAM_CHUNK)
            except OSError as exc:
                raise BundleError(f"cannot read bundle file {name}: {exc.strerror or exc}") from None
            if not block:
                break
            digest.update(block)
            if out is not None:
                out.write(block)
    actual = digest.hexdigest()
    if verify and actual != sha256:
        raise BundleError(f"checksum mismatch for bundle file {name}: the bundle is corrupt or was edited")
    return actual


NPY_HEADER_MAX_BYTES = 4096  # an .npy header as numpy writes it is 128 bytes; more is not an array of ours


def npy_header(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy file declares, from its header alone (a few hundred bytes read, never
    the data): a file can be refused for its size before it is read. BundleError if it is not an .npy."""
    try:
        problem = not_regular(path)  # a FIFO would block the read below
        if problem:
            raise BundleError(f"{name}: {problem}")
        with open(path, "rb") as fh:
            buf = io.BytesIO(fh.read(NPY_HEADER_MAX_BYTES))
    except FileNotFoundError:
        raise BundleError(f"{name} is missing") from None
    except OSError as exc:
        raise BundleError(f"cannot read {name}: {exc.strerror or exc}") from None
    shape, _, dtype = _read_npy_header(buf, name)
    return tuple(shape), dtype


def _read_npy_header(buf: io.BytesIO, name: str):
    """(shape, fortran order, dtype) from an .npy header at the start of `buf`, which is left at the data."""
    try:
        version = np.lib.format.read_magic(buf)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
        return header(buf)
    except Exception as exc:  # numpy raises ValueError, SyntaxError or others on a bad header
        raise BundleError(f"{name} is not a readable .npy array ({str(exc)[:120]})") from None


def parse_npy(data: bytes, name: str, shape_check, dtypes=("float32", "float64", "float16")) -> np.ndarray:
    """An .npy array from bytes, header checked before any data is allocated; never unpickled."""
    buf = io.BytesIO(data)
    shape, fortran, dtype = _read_npy_header(buf, name)
    if dtype.hasobject or dtype.name not in dtypes:
        raise BundleError(f"{name} holds {dtype} data; expected one of {', '.join(dtypes)}")
    problem = shape_check(shape)
    if problem:
        raise BundleError(f"{name} has shape {shape}: {problem}")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - buf.tell() != expected:
        raise BundleError(f"{name} holds {len(data) - buf.tell()} data bytes, its header promises {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=buf.tell())
    return array.reshape(shape, order="F" if fortran else "C").astype(np.float32)


_WARNED_RANDOM: set[Path] = set()  # bundles already said to hold random weights, in this process


def random_weights(manifest: Manifest) -> bool:
    """Whether the bundle was exported with --pretrained none: its scores say nothing about any part."""
    return (manifest.backbone.get("weights") or {}).get("kind") == "none"


def warn_random_weights(bundle: "Bundle") -> None:
    """Say once per process, on stderr (the log), that a bundle's weights are random."""
    root = bundle.root.resolve()
    if random_weights(bundle.manifest) and root not in _WARNED_RANDOM:
        _WARNED_RANDOM.add(root)
        seed = (bundle.manifest.backbone.get("weights") or {}).get("seed")
        log.warning("the bundle %s has RANDOM weights (winclip-export --pretrained none%s): its scores mean "
                    "nothing; export it again with the real checkpoint to inspect parts (docs/bundle-format.md)",
                    bundle.root, "" if seed is None else f", seed {seed}")


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its root, its typed manifest and its text prototypes.

    Text prototypes are read once, here, from verified bytes. Engines are large
    and a box runs one of them: each is hashed when a session reads it
    (`read_engine` for its bytes, `engine_copy` for a private checked copy to load
    from, `hash_engine` for the hash alone), never trusted from an earlier check.
    """

    root: Path
    manifest: Manifest
    verify_checksums: bool = True
    _text: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | Path, verify_checksums: bool = True) -> "Bundle":
        """Read and check a bundle directory; BundleError with a one-line reason otherwise."""
        try:
            bundle = cls._load(Path(root), verify_checksums)
        except OSError as exc:  # an unreadable folder, a file that vanished: still one line, still ours
            raise BundleError(f"cannot read the bundle {root}: {exc.strerror or exc}") from None
        warn_random_weights(bundle)
        return bundle

    @classmethod
    def _load(cls, root: Path, verify_checksums: bool) -> "Bundle":
        if not root.is_dir():
            raise BundleError(f"bundle directory not found: {root}")
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.exists():
            raise BundleError(f"{root} is not a bundle: {MANIFEST_NAME} is missing")
        resolve_inside(root, MANIFEST_NAME)  # no symlink out, for the manifest too
        try:
            manifest = Manifest.from_json(read_json(manifest_path, "bundle manifest"))
        except SchemaError as exc:
            raise BundleError(f"{manifest_path}: {exc}") from None
        for ref in manifest.files():
            path = resolve_inside(root, ref.file)
            if not path.is_file():
                raise BundleError(f"bundle file missing: {ref.file}")
        text = {}
        dim = manifest.embed_dim
        for name, ref in manifest.objects.items():
            data = read_checked(root, ref.file, ref.sha256, verify_checksums, max_bytes=MAX_TEXT_BYTES)
            text[name] = parse_npy(data, f"text embeddings {ref.file}",
                                   lambda s: None if s == (2, dim) else f"expected (2, {dim})")
            if not np.isfinite(text[name]).all() or not (np.linalg.norm(text[name], axis=1) > 0).all():
                raise BundleError(f"text embeddings {ref.file} hold a zero, NaN or infinite prototype")
        return cls(root, manifest, verify_checksums, text)

    @property
    def objects(self) -> list[str]:
        return list(self.manifest.objects)

    def text_prototypes(self, object_name: str) -> np.ndarray:
        """(2, D) float32: row 0 the normal prototype, row 1 the anomalous one."""
        name = normalize_object_name(object_name)
        if name not in self._text:
            have = ", ".join(repr(o) for o in self.objects) or "none"
            raise BundleError(f"bundle has no text embeddings for object {name!r}; it has: {have}")
        return self._text[name].copy()

    def engine(self, precision: str) -> Engine:
        try:
            return self.manifest.engine(precision)
        except KeyError:
            raise BundleError(
                f"this bundle has no {precision} engine (it has: {', '.join(self.manifest.precisions)}); "
                f"add one with: winclip-quantize {self.root} --precision {precision} --calibration DIR"
            ) from None

    def hash_engine(self, engine: Engine) -> str:
        """The engine file's sha256, streamed (nothing of it is kept) and checked against the manifest."""
        return stream_checked(self.root, engine.file, engine.sha256, self.verify_checksums)

    @contextmanager
    def engine_copy(self, engine: Engine, folder: Path) -> Iterator[tuple[Path, str]]:
        """A private copy of the engine (a new 0600 file in `folder`) and its sha256, removed on exit.

        The copy is written as the engine is streamed and hashed, and refused unless
        it matches the manifest: a library that reads a model from a path then runs
        exactly the checked bytes (the copy is this process's own; the bundle's file
        could change under it), and this process never holds the bytes whole.
        OSError when the copy cannot be written.
        """
        fd, name = tempfile.mkstemp(prefix=".engine-", suffix=Path(engine.file).suffix, dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                sha256 = stream_checked(self.root, engine.file, engine.sha256, self.verify_checksums, out=out)
            yield Path(name), sha256
        finally:
            Path(name).unlink(missing_ok=True)

    def read_engine(self, engine: Engine) -> tuple[bytes, str]:
        """The engine's bytes and their sha256, checked against the manifest as read."""
        data = read_checked(self.root, engine.file, engine.sha256, self.verify_checksums)
        return data, engine.sha256 if self.verify_checksums else hashlib.sha256(data).hexdigest()  # checked: no rehash

    def read_weights(self, engine: Engine) -> bytes | None:
        """An OpenVINO IR engine's weights (.bin), checked against the manifest as read; None for ONNX."""
        if engine.weights is None:
            return None
        return read_checked(self.root, engine.weights.file, engine.weights.sha256, self.verify_checksums)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Replace ROOT/manifest.json atomically (a reader sees the old or the new one, whole)."""
    text = json.dumps(manifest.to_json(), indent=2, allow_nan=False) + "\n"
    write_atomic(root / MANIFEST_NAME, text.encode("utf-8"), sync=True)
