"""Adding an engine to a bundle: make it with a builder of the table, guard it against fp32, install it.

The bundle changes in two atomic steps: the engine's files are written under
new names, then the manifest is replaced; a failure at any point leaves the bundle exactly
as it was. An engine that fails the accuracy guard is refused unless the user
accepts a degraded one, which is recorded and warned about at every load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from winclip.calibration.engines import BUILDERS
from winclip.calibration.engines.base import Builder
from winclip.calibration.engines.errors import QuantizeError
from winclip.calibration.engines.frames import load_frame_sets
from winclip.calibration.engines.guard import GuardLimits, guard
from winclip.runtime import cpu
from winclip.runtime.atomic import remove_leftovers, write_atomic
from winclip.runtime.backends import DEFAULT_BACKEND, BackendOptions, backend_class
from winclip.runtime.bundle import Bundle, write_manifest
from winclip.runtime.contract import ENGINE_SUFFIX, Engine, FileRef, engine_file_name
from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.images import display_path
from winclip.runtime.locks import writer_lock
from winclip.runtime.memory import MemoryKey
from winclip.runtime.preprocess import Preprocessor
from winclip.runtime.provenance import package_versions
from winclip.runtime.scoring import WinClipScorer

log = logging.getLogger(__name__)

__all__ = ["QuantizeError", "add_engine", "install_engine"]
LOCK_NAME = ".winclip-write.lock"  # inside the bundle: quantize changes files in it, never the folder itself


def engine_globs() -> tuple[str, ...]:
    """How derived engines are named (engine_file_name): every engine format's suffix, and every builder's side
    files (read when called: a row added to BUILDERS counts)."""
    side = (suffix for builder in BUILDERS.values() for suffix in builder.side_files)
    return tuple(f"visual-*{suffix}" for suffix in dict.fromkeys((*ENGINE_SUFFIX.values(), *side)))


def guard_backend(graph: bytes, engine: Engine, bundle: Bundle, device: str, backend: str,
                  weights: bytes | None = None, compute: str | None = None):
    """A backend of the table over an engine's bytes, for the guard (no cache: a candidate is not installed yet).
    compute: the compute precision to run it at, where the backend has that choice."""
    extra = {"weights": weights} if weights is not None else {}
    return backend_class(backend).from_bytes(graph, engine, bundle.manifest,
                                             BackendOptions(device=device, cache=False, inference_precision=compute),
                                             **extra)


def guard_scoring(bundle: Bundle, precision: str, object_name: str) -> tuple[WinClipScorer, MemoryKey]:
    """How the guard scores frames of `object_name` for an engine of `precision`: the bundle's scorer for that
    object (an object the bundle lacks is refused here, before any engine is made), and the key its few-shot
    memories are built under."""
    m = bundle.manifest
    scorer = WinClipScorer(m.grid, m.scales, m.stride, bundle.text_prototypes(object_name), m.temperature)
    key = MemoryKey(bundle.engine("fp32").sha256, precision, object_name, tuple(m.scales), m.stride, m.patch_layer,
                    m.patch_ln_post)
    return scorer, key


def add_engine(bundle_root: str | Path, precision: str, images: Path, *, backend: str = DEFAULT_BACKEND,
               object_name: str | None = None, settings=None, holdout: int = 6, seed: int = 0,
               limits: GuardLimits = GuardLimits(), accept_degraded: bool = False, force: bool = False) -> Engine:
    """Make an engine of the builders' table from the bundle's fp32 engine, guard it on real frames, add it.

    images: a folder of the line's real frames (normal parts; defects welcome),
    split reproducibly (seed) into frames held out for the guard, one frame
    for the guard's few-shot memory and, where the builder calibrates,
    calibration frames. backend: whose engine to make (the table's key with precision).
    settings: the builder's settings (default: its defaults; from option values: `builder.settings`).
    """
    if (backend, precision) not in BUILDERS:
        offered = ", ".join(f"--backend {b} --precision {p}" for b, p in BUILDERS)
        raise QuantizeError(f"no builder makes a {precision} engine for {backend}; there are: {offered}")
    builder = BUILDERS[backend, precision]
    builder.check_tools()
    root = Path(bundle_root)
    if not root.is_dir():
        Bundle.load(root)  # its one-line refusal
    if not os.access(root, os.W_OK):
        raise QuantizeError(f"the bundle {root} is read-only; nothing was changed")
    with writer_lock(root / LOCK_NAME, f"the bundle {root}"):
        try:
            return _add_engine(root, builder, images, object_name, settings, holdout, seed, limits,
                               accept_degraded, force)
        except OSError as exc:  # a full disk in the work folder, an unreadable frame folder: ours, in one line
            raise QuantizeError(f"making the {precision} engine failed: {exc.strerror or exc}; nothing was changed "
                                f"in {root}") from None


def _add_engine(root: Path, builder: Builder, images: Path, object_name, settings, holdout: int, seed: int,
                limits: GuardLimits, accept_degraded: bool, force: bool) -> Engine:
    backend, precision = builder.backend, builder.precision
    settings = settings or builder.settings_type()
    bundle = Bundle.load(root)
    root = bundle.root
    remove_orphans(bundle)  # first: a run that stops early (refused, guard failed, killed) still cleans up
    m = bundle.manifest
    settings.check(m.layers)
    if any(e.key == (builder.format, precision) for e in m.engines) and not force:
        label = Engine("", precision, "", {}, format=builder.format).label
        raise QuantizeError(f"the bundle already has an {label} engine; pass --force to replace it")
    if holdout < 2:
        raise QuantizeError("the guard needs at least 2 held-out frames")
    fp32 = bundle.engine("fp32")
    object_name = object_name or bundle.objects[0]
    scorer, key = guard_scoring(bundle, precision, object_name)
    sets = load_frame_sets(images, Preprocessor(m.preprocess), holdout, builder.calibration_frames(settings), seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="winclip-quantize-") as tmp:
        work = Path(tmp)
        data, _ = bundle.read_engine(fp32)
        source = work / "fp32.onnx"
        source.write_bytes(data)
        candidate = work / f"{precision}{ENGINE_SUFFIX[builder.format]}"
        how = builder.describe(settings)
        log.info("making the %s engine for %s%s", precision, backend, f" ({how})" if how else "")
        try:
            notes = builder.make(source, candidate, settings, sets, m.input_name)
        except WinclipError:
            raise
        except Exception as exc:  # the tools raise many kinds; one line for the user
            raise QuantizeError(f"making the {precision} engine failed: {first_line(exc)}") from None
        made_s = time.perf_counter() - t0
        engine_bytes = candidate.read_bytes()
        weights = _side_file(builder, candidate)
    log.info("guarding it against fp32 on %d held-out frames (zero-shot and few-shot) on %s", holdout, backend)
    provisional = Engine(file=f"new {precision} engine", precision=precision, sha256="0" * 64, made_by={},
                         format=builder.format, weights=FileRef("new weights", "0" * 64) if weights else None)
    # an engine whose backend chooses its compute precision is guarded at the one it will run at (and says which)
    compute = builder.guard_compute()
    report = guard(guard_backend(data, fp32, bundle, builder.guard_device, builder.reference_backend),
                   guard_backend(engine_bytes, provisional, bundle, builder.guard_device, backend, weights, compute),
                   scorer, sets.holdout, sets.memory, key, limits)
    del data
    report["object"] = object_name
    if compute is not None:
        report["compute"] = compute
    report["recipe"] = how  # what was guarded, with the choices this CPU made (weight range, overflow fix)
    if not report["passed"] and not accept_degraded:
        hint = builder.failure_hint()
        raise QuantizeError(f"the {precision} engine failed its accuracy guard: {'; '.join(report['failures'])}; "
                            f"{hint + '; ' if hint else ''}the bundle is unchanged (--accept-degraded adds it anyway)")
    digest = hashlib.sha256(engine_bytes).hexdigest()
    stem, suffix = engine_file_name(precision, builder.format).rsplit(".", 1)
    name = f"{stem}-{digest[:12]}.{suffix}"  # a new name: readers never see a half-swap
    weights_ref = None
    if weights is not None:
        weights_ref = FileRef(f"{stem}-{digest[:12]}{builder.side_files[0]}", hashlib.sha256(weights).hexdigest())
    made_by = {"tool": "winclip-quantize", "backend": backend, "precision": precision, "source_sha256": fp32.sha256,
               "settings": {**builder.record(settings), **(notes or {})}, "cpu": cpu.current().record(),
               "frames": {"folder": display_path(images), "seed": seed, "holdout": len(sets.holdout),
                          "calibration": len(sets.calibration), "skipped": len(sets.skipped)},
               "seconds": round(made_s, 1),
               "versions": package_versions("winclip-edge", *builder.distributions()),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    engine = Engine(file=name, precision=precision, sha256=digest, made_by=made_by, guard=report,
                    accepted_degraded=not report["passed"], format=builder.format, weights=weights_ref)
    install_engine(bundle, engine, engine_bytes, weights)
    return engine


def _side_file(builder: Builder, candidate: Path) -> bytes | None:
    """The bytes of the file the builder's tool wrote beside the engine (the manifest keeps one), or None."""
    for suffix in builder.side_files:
        path = candidate.with_suffix(suffix)
        if not path.is_file():
            raise QuantizeError(f"making the {builder.precision} engine failed: the tool wrote no {suffix} file "
                                f"beside it")
        return path.read_bytes()
    return None


def remove_orphans(bundle: Bundle) -> list[str]:
    """Remove (and say so, in one line) the engine files the manifest does not name and the .tmp-*.part
    files: what a write killed between its two steps (kill -9 while the manifest was written) leaves.
    Call under the bundle's writer lock."""
    root = bundle.root
    named = {ref.file for ref in bundle.manifest.files()}
    orphans = [p.name for pattern in engine_globs() for p in root.glob(pattern) if p.name not in named]
    return remove_leftovers(root, [*orphans, ".tmp-*.part"], f"the bundle {root}")


def install_engine(bundle: Bundle, engine: Engine, data: bytes, weights: bytes | None = None) -> None:
    """Write the engine's files, then the manifest that names them; drop the engine it replaces.

    Call under the bundle's writer lock. Engine files the manifest does not name are what a write killed
    between its two steps left behind: they are removed first, and said so.
    """
    root = bundle.root
    remove_orphans(bundle)
    old = next((e for e in bundle.manifest.engines if e.key == engine.key), None)
    old_files = {ref.file for ref in old.files()} if old is not None else set()
    writes = [(engine.file, data), *([(engine.weights.file, weights)] if engine.weights is not None else [])]
    written = []
    try:
        for name, content in writes:
            write_atomic(root / name, content, sync=True)
            written.append(name)
        write_manifest(root, bundle.manifest.with_engine(engine))
    except BaseException as exc:
        for name in written:
            if name not in old_files:
                (root / name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise QuantizeError(f"cannot write into the bundle {root}: {exc.strerror or exc}; nothing was changed") from None
        raise
    for name in old_files - {ref.file for ref in engine.files()}:
        (root / name).unlink(missing_ok=True)
