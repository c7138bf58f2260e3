"""Adding an engine to a bundle: make it with a builder of the table, guard it against fp32, install it.

The bundle changes in two atomic steps: the engine is written under a new name,
then the manifest is replaced; a failure at any point leaves the bundle exactly
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
from importlib import metadata
from pathlib import Path

from winclip.calibration.engines import BUILDERS
from winclip.calibration.engines.errors import QuantizeError
from winclip.calibration.engines.frames import load_frame_sets
from winclip.calibration.engines.guard import GuardLimits, guard
from winclip.runtime.atomic import remove_leftovers, write_atomic
from winclip.runtime.backends import BackendOptions
from winclip.runtime.bundle import Bundle, write_manifest
from winclip.runtime.contract import Engine, engine_file_name
from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.images import display_path
from winclip.runtime.locks import writer_lock
from winclip.runtime.memory import MemoryKey
from winclip.runtime.preprocess import Preprocessor
from winclip.runtime.scoring import WinClipScorer

log = logging.getLogger(__name__)

__all__ = ["QuantizeError", "add_engine", "install_engine"]
LOCK_NAME = ".winclip-write.lock"  # inside the bundle: quantize changes files in it, never the folder itself
ENGINE_GLOB = "visual-*.onnx"  # how derived engines are named (contract.engine_file_name + a digest)


def _need_tools():
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as exc:
        raise QuantizeError(f"the quantization tools are missing ({exc.name}): "
                            "pip install 'winclip-edge[quantize]'") from None


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("winclip-edge", "onnxruntime", "onnxruntime-gpu", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def guard_backend(graph: bytes, engine: Engine, bundle: Bundle, device: str):
    """An ONNX Runtime backend over graph bytes, for the guard (no graph cache: a candidate is not installed yet)."""
    from winclip.runtime.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_bytes(graph, engine, bundle.manifest, BackendOptions(device=device, cache=False))


def add_engine(bundle_root: str | Path, precision: str, images: Path, *, object_name: str | None = None,
               settings=None, holdout: int = 6, seed: int = 0, limits: GuardLimits = GuardLimits(),
               accept_degraded: bool = False, force: bool = False) -> Engine:
    """Make an engine of the builders' table from the bundle's fp32 engine, guard it on real frames, add it.

    images: a folder of the line's real frames (normal parts; defects welcome),
    split reproducibly (seed) into frames held out for the guard, one frame
    for the guard's few-shot memory and, where the builder calibrates,
    calibration frames. settings: the builder's settings (default: its defaults).
    """
    _need_tools()
    if precision not in BUILDERS:
        raise QuantizeError(f"precision must be one of {', '.join(BUILDERS)}, got {precision!r}")
    root = Path(bundle_root)
    if not root.is_dir():
        Bundle.load(root)  # its one-line refusal
    if not os.access(root, os.W_OK):
        raise QuantizeError(f"the bundle {root} is read-only; nothing was changed")
    with writer_lock(root / LOCK_NAME, f"the bundle {root}"):
        try:
            return _add_engine(root, BUILDERS[precision], precision, images, object_name, settings, holdout, seed,
                               limits, accept_degraded, force)
        except OSError as exc:  # a full disk in the work folder, an unreadable frame folder: ours, in one line
            raise QuantizeError(f"making the {precision} engine failed: {exc.strerror or exc}; nothing was changed "
                                f"in {root}") from None


def _add_engine(root: Path, builder, precision: str, images: Path, object_name, settings, holdout: int, seed: int,
                limits: GuardLimits, accept_degraded: bool, force: bool) -> Engine:
    settings = settings or builder.settings_type()
    bundle = Bundle.load(root)
    root = bundle.root
    m = bundle.manifest
    settings.check(m.layers)
    if precision in m.precisions and not force:
        raise QuantizeError(f"the bundle already has an {precision} engine; pass --force to replace it")
    if holdout < 2:
        raise QuantizeError("the guard needs at least 2 held-out frames")
    fp32 = bundle.engine("fp32")
    object_name = object_name or bundle.objects[0]
    scorer = WinClipScorer(m.grid, m.scales, m.stride, bundle.text_prototypes(object_name), m.temperature)
    sets = load_frame_sets(images, Preprocessor(m.preprocess), holdout, builder.calibration_frames(settings), seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="winclip-quantize-") as tmp:
        work = Path(tmp)
        data, _ = bundle.read_engine(fp32)
        source = work / "fp32.onnx"
        source.write_bytes(data)
        candidate = work / f"{precision}.onnx"
        how = builder.describe(settings)
        log.info("making the %s engine%s", precision, f" ({how})" if how else "")
        try:
            builder.make(source, candidate, settings, sets, m.input_name)
        except WinclipError:
            raise
        except Exception as exc:  # the tools raise many kinds; one line for the user
            raise QuantizeError(f"making the {precision} engine failed: {first_line(exc)}") from None
        made_s = time.perf_counter() - t0
        engine_bytes = candidate.read_bytes()
    log.info("guarding it against fp32 on %d held-out frames (zero-shot and few-shot)", holdout)
    key = MemoryKey(fp32.sha256, precision, object_name, tuple(m.scales), m.stride, m.patch_layer, m.patch_ln_post)
    provisional = Engine(file=f"new {precision} engine", precision=precision, sha256="0" * 64, made_by={})
    report = guard(guard_backend(data, fp32, bundle, builder.guard_device),
                   guard_backend(engine_bytes, provisional, bundle, builder.guard_device),
                   scorer, sets.holdout, sets.memory, key, limits)
    del data
    report["object"] = object_name
    if not report["passed"] and not accept_degraded:
        raise QuantizeError(f"the {precision} engine failed its accuracy guard: {'; '.join(report['failures'])}; "
                            "the bundle is unchanged (--accept-degraded adds it anyway)")
    digest = hashlib.sha256(engine_bytes).hexdigest()
    name = f"{engine_file_name(precision)[:-5]}-{digest[:12]}.onnx"  # a new name: readers never see a half-swap
    made_by = {"tool": "winclip-quantize", "precision": precision, "source_sha256": fp32.sha256,
               "settings": builder.record(settings),
               "frames": {"folder": display_path(images), "seed": seed, "holdout": len(sets.holdout),
                          "calibration": len(sets.calibration), "skipped": len(sets.skipped)},
               "seconds": round(made_s, 1), "versions": _versions(),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    engine = Engine(file=name, precision=precision, sha256=digest, made_by=made_by, guard=report,
                    accepted_degraded=not report["passed"])
    install_engine(bundle, engine, engine_bytes)
    return engine


def install_engine(bundle: Bundle, engine: Engine, data: bytes) -> None:
    """Write the engine file, then the manifest that names it; drop the engine it replaces.

    Call under the bundle's writer lock. Engine files the manifest does not name are what a write killed
    between its two steps left behind: they are removed first, and said so.
    """
    root = bundle.root
    named = {ref.file for ref in bundle.manifest.files()}
    orphans = [p.name for p in root.glob(ENGINE_GLOB) if p.name not in named]
    remove_leftovers(root, [*orphans, ".tmp-*.part"], f"the bundle {root}")
    old = next((e for e in bundle.manifest.engines if e.precision == engine.precision), None)
    target = root / engine.file
    try:
        write_atomic(target, data, sync=True)
        write_manifest(root, bundle.manifest.with_engine(engine))
    except BaseException as exc:
        if target.exists() and (old is None or old.file != engine.file):
            target.unlink()
        if isinstance(exc, OSError):
            raise QuantizeError(f"cannot write into the bundle {root}: {exc.strerror or exc}; nothing was changed") from None
        raise
    if old is not None and old.file != engine.file:
        (root / old.file).unlink(missing_ok=True)
