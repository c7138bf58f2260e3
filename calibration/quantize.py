"""Reduced-precision engines for an existing bundle, without torch.

int8: ONNX Runtime's quantization tools on the fp32 engine, after their
pre-processing (shape inference + graph optimisation; without it dynamic
quantisation leaves weights in fp32). Dynamic quantisation (the default:
fastest here, needs no calibration) or static quantisation fed by the line's
own frames through ONNX Runtime's `CalibrationDataReader`.
fp16 (for CUDA): onnxruntime's float16 converter with fp32 inputs and outputs
and LayerNorm, Softmax and reductions kept in fp32.

Every engine passes the accuracy guard (guard.py) before it is added, unless
the user accepts a degraded one, which is recorded and warned about at every
load. The bundle changes in two atomic steps: the engine is written under a
new name, then the manifest is replaced; a failure at any point leaves the
bundle exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from winclip.calibration.guard import GuardLimits, guard
from winclip.runtime.atomic import write_atomic
from winclip.runtime.bundle import Bundle, write_manifest
from winclip.runtime.contract import Engine, engine_file_name
from winclip.runtime.errors import first_line
from winclip.runtime.images import ImageReadError, display_path, list_images, read_image
from winclip.runtime.memory import MemoryKey
from winclip.runtime.preprocess import Preprocessor
from winclip.runtime.scoring import WinClipScorer

QUANT_METHODS = ("dynamic", "static")
QUANT_FORMATS = ("qoperator", "qdq")
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")


class QuantizeError(Exception):
    """Quantization that cannot go ahead or whose engine was refused, with a one-line reason."""


def _need_tools():
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as exc:
        raise QuantizeError(f"the quantization tools are missing ({exc.name}): "
                            "pip install 'winclip-edge[quantize]'") from None


@dataclass
class Int8Settings:
    """How the int8 engine is made: the knobs that trade speed against the guard."""

    method: str = "dynamic"  # dynamic | static
    per_channel: bool = True
    quant_format: str = "qoperator"  # static only: qoperator | qdq
    quantize_attention: bool = False  # also the activation x activation MatMuls of attention
    fp32_blocks: tuple[int, ...] = ()  # transformer blocks (1-based) left in fp32
    reduce_range: bool = True  # 7-bit weights: without VNNI, AVX2 u8 x s8 kernels saturate on 8-bit ones
    calibration_frames: int = 8  # static only

    def check(self) -> None:
        if self.method not in QUANT_METHODS:
            raise QuantizeError(f"unknown method {self.method!r}; use {' or '.join(QUANT_METHODS)}")
        if self.quant_format not in QUANT_FORMATS:
            raise QuantizeError(f"unknown format {self.quant_format!r}; use {' or '.join(QUANT_FORMATS)}")
        if self.calibration_frames < 1:
            raise QuantizeError("static quantization needs at least one calibration frame")


def frame_reader(batches: list[np.ndarray], input_name: str):
    """An ONNX Runtime `CalibrationDataReader` over preprocessed real frames, one frame per call."""
    from onnxruntime.quantization import CalibrationDataReader  # an optional extra: imported when used

    class FrameReader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self) -> dict | None:
            batch = next(self._next, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._next = iter(batches)

    return FrameReader()


@dataclass
class FrameSets:
    """Real frames split once, reproducibly: calibration, few-shot memory for the guard, held-out."""

    calibration: list[np.ndarray]
    memory: list[np.ndarray]
    holdout: list[np.ndarray]
    skipped: list[str] = field(default_factory=list)
    seed: int = 0


def load_frame_sets(folder: Path, preprocessor: Preprocessor, holdout: int, calibration: int,
                    seed: int = 0, log: Callable[[str], None] = print) -> FrameSets:
    """Read and split the images of `folder`; unreadable ones are skipped with a warning and counted."""
    try:
        paths, problems = list_images(folder)
    except ImageReadError as exc:
        raise QuantizeError(str(exc)) from None
    paths = sorted(paths)
    random.Random(seed).shuffle(paths)
    frames, skipped = [], list(problems)
    for path in paths:
        try:
            frames.append(preprocessor([read_image(path)]))
        except (ImageReadError, ValueError) as exc:
            skipped.append(first_line(exc) if isinstance(exc, ImageReadError) else f"{display_path(path)}: {exc}")
    for problem in skipped:
        log(f"warning: skipped {problem}")
    memory = 1
    needed = holdout + memory + calibration
    if len(frames) < needed:
        raise QuantizeError(f"{display_path(folder)} has {len(frames)} usable images; {needed} are needed "
                            f"({holdout} held out for the guard, {memory} for its few-shot memory"
                            + (f", {calibration} to calibrate" if calibration else "") + ")")
    return FrameSets(calibration=frames[holdout + memory:holdout + memory + calibration] if calibration else [],
                     memory=frames[holdout:holdout + memory], holdout=frames[:holdout], skipped=skipped, seed=seed)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("winclip-edge", "onnxruntime", "onnxruntime-gpu", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _block_nodes(model, blocks: tuple[int, ...]) -> list[str]:
    """Names of the graph nodes of the given 1-based transformer blocks (export names them /explicit.<i>/)."""
    prefixes = tuple(f"/explicit.{b - 1}/" for b in blocks)
    return [n.name for n in model.graph.node if n.name.startswith(prefixes)]


def make_int8(fp32_path: Path, out_path: Path, settings: Int8Settings, reader=None) -> None:
    """Write the int8 graph of the fp32 graph at fp32_path."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_name("prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared))
    except Exception:  # symbolic shape inference fails on graphs with computed reshapes (older exports)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    exclude = _block_nodes(onnx.load(str(prepared), load_external_data=False), settings.fp32_blocks)
    extra = {"MatMulConstBOnly": not settings.quantize_attention}
    if settings.method == "dynamic":
        quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=settings.per_channel,
                         reduce_range=settings.reduce_range, op_types_to_quantize=["MatMul", "Gemm"],
                         nodes_to_exclude=exclude, extra_options=extra)
    else:
        quantize_static(str(prepared), str(out_path), reader,
                        quant_format=QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator,
                        op_types_to_quantize=["MatMul", "Gemm"], per_channel=settings.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                        reduce_range=settings.reduce_range, extra_options=extra)
    prepared.unlink(missing_ok=True)


def make_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write the fp16 graph (fp32 inputs and outputs; LayerNorm, Softmax, reductions in fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32])
    onnx.save(model, str(out_path))


def _session(path_or_bytes, precision: str, device: str):
    """A guard session on `device` ('auto' or 'cpu')."""
    import onnxruntime as ort

    from winclip.runtime.session import choose_providers, session_options

    providers = choose_providers(device)
    return ort.InferenceSession(path_or_bytes, session_options(None, precision, providers), providers=providers)


def add_engine(bundle_root: str | Path, precision: str, images: Path, *, object_name: str | None = None,
               settings: Int8Settings | None = None, holdout: int = 6, seed: int = 0,
               limits: GuardLimits = GuardLimits(), accept_degraded: bool = False, force: bool = False,
               log: Callable[[str], None] = print) -> Engine:
    """Make an int8 or fp16 engine from the bundle's fp32 engine, guard it on real frames, add it.

    images: a folder of the line's real frames (normal parts; defects welcome),
    split reproducibly (seed) into frames held out for the guard, one frame
    for the guard's few-shot memory and, for static int8, calibration frames.
    """
    _need_tools()
    if precision not in ("int8", "fp16"):
        raise QuantizeError(f"precision must be int8 or fp16, got {precision!r}")
    settings = settings or Int8Settings()
    settings.check()
    bundle = Bundle.load(bundle_root)
    root = bundle.root
    m = bundle.manifest
    if precision in m.precisions and not force:
        raise QuantizeError(f"the bundle already has an {precision} engine; pass --force to replace it")
    if not os.access(root, os.W_OK):
        raise QuantizeError(f"the bundle {root} is read-only; nothing was changed")
    if holdout < 2:
        raise QuantizeError("the guard needs at least 2 held-out frames")
    if any(b > m.layers for b in settings.fp32_blocks):
        raise QuantizeError(f"--fp32-blocks {list(settings.fp32_blocks)}: the model has blocks 1..{m.layers}")
    fp32 = bundle.engine("fp32")
    objects = bundle.objects
    object_name = object_name or objects[0]
    scorer = WinClipScorer(m.grid, m.scales, m.stride, bundle.text_prototypes(object_name), m.temperature)
    preprocessor = Preprocessor(m.preprocess)
    static = precision == "int8" and settings.method == "static"
    sets = load_frame_sets(images, preprocessor, holdout, settings.calibration_frames if static else 0, seed, log)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="winclip-quantize-") as tmp:
        work = Path(tmp)
        data, _ = bundle.read_engine(fp32)
        source = work / "fp32.onnx"
        source.write_bytes(data)
        candidate = work / f"{precision}.onnx"
        log(f"making the {precision} engine" + (f" ({settings.method}, per-{'channel' if settings.per_channel else 'tensor'})"
                                                if precision == "int8" else ""))
        try:
            if precision == "int8":
                make_int8(source, candidate, settings, frame_reader(sets.calibration, m.input_name) if static else None)
            else:
                make_fp16(source, candidate)
        except QuantizeError:
            raise
        except Exception as exc:  # the tools raise many kinds; one line for the user
            raise QuantizeError(f"making the {precision} engine failed: {first_line(exc)}") from None
        made_s = time.perf_counter() - t0
        log(f"guarding it against fp32 on {holdout} held-out frames (zero-shot and few-shot)")
        key = MemoryKey(fp32.sha256, precision, object_name, tuple(m.scales), m.stride, m.patch_layer, m.patch_ln_post)
        device = "auto" if precision == "fp16" else "cpu"  # fp16 is for CUDA where there is one; int8 for the CPU
        report = guard(_session(data, "fp32", device), _session(str(candidate), precision, device), scorer,
                       sets.holdout, sets.memory, key, limits)
        report["object"] = object_name
        if not report["passed"] and not accept_degraded:
            raise QuantizeError(f"the {precision} engine failed its accuracy guard: {'; '.join(report['failures'])}; "
                                "the bundle is unchanged (--accept-degraded adds it anyway)")
        engine_bytes = candidate.read_bytes()
    digest = hashlib.sha256(engine_bytes).hexdigest()
    name = f"{engine_file_name(precision)[:-5]}-{digest[:12]}.onnx"  # a new name: readers never see a half-swap
    made_by = {"tool": "winclip-quantize", "precision": precision, "source_sha256": fp32.sha256,
               "settings": asdict(settings) if precision == "int8" else {"keep_fp32_ops": list(FP16_KEEP_FP32)},
               "frames": {"folder": display_path(images), "seed": seed, "holdout": len(sets.holdout),
                          "calibration": len(sets.calibration), "skipped": len(sets.skipped)},
               "seconds": round(made_s, 1), "versions": _versions(),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    engine = Engine(file=name, precision=precision, sha256=digest, made_by=made_by, guard=report,
                    accepted_degraded=not report["passed"])
    install_engine(bundle, engine, engine_bytes)
    return engine


def install_engine(bundle: Bundle, engine: Engine, data: bytes) -> None:
    """Write the engine file, then the manifest that names it; drop the engine it replaces."""
    root = bundle.root
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

