"""int8 engines for the CPU: ONNX Runtime's own quantization tools on the fp32 graph.

After their pre-processing (shape inference + graph optimisation; without it
dynamic quantisation leaves weights in fp32): dynamic quantisation (the default:
fastest here, needs no calibration) or static quantisation fed by the line's own
frames through `CalibrationDataReader`. Weights are full-range 8-bit where the
CPU's int8 kernels cannot saturate (x86 with VNNI, every ARM64 CPU) and 7-bit
elsewhere, unless asked; the engine's record keeps the CPU it was made on and
which weight range it has, and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click

from winclip.calibration.engines.base import Builder
from winclip.calibration.engines.errors import QuantizeError
from winclip.calibration.engines.frames import FrameSets, frame_reader
from winclip.runtime import cpu
from winclip.runtime.command import Whole
from winclip.runtime.contract import FORMAT_ONNX

QUANT_METHODS = ("dynamic", "static")
QUANT_FORMATS = ("qoperator", "qdq")


@dataclass
class Int8Settings:
    """How the int8 engine is made: the knobs that trade speed against the guard."""

    method: str = "dynamic"  # dynamic | static
    per_channel: bool = True
    quant_format: str = "qoperator"  # static only: qoperator | qdq
    quantize_attention: bool = False  # also the activation x activation MatMuls of attention
    fp32_blocks: tuple[int, ...] = ()  # transformer blocks (1-based) left in fp32
    reduce_range: bool | None = None  # 7-bit weights; None: only where the CPU has no int8 dot product (VNNI)
    calibration_frames: int = 8  # static only

    def check(self, layers: int) -> None:
        if self.method not in QUANT_METHODS:
            raise QuantizeError(f"unknown method {self.method!r}; use {' or '.join(QUANT_METHODS)}")
        if self.quant_format not in QUANT_FORMATS:
            raise QuantizeError(f"unknown format {self.quant_format!r}; use {' or '.join(QUANT_FORMATS)}")
        if self.calibration_frames < 1:
            raise QuantizeError("static quantization needs at least one calibration frame")
        if any(b > layers for b in self.fp32_blocks):
            raise QuantizeError(f"--fp32-blocks {list(self.fp32_blocks)}: the model has blocks 1..{layers}")


def for_this_cpu(settings: Int8Settings, machine: cpu.CpuInfo | None = None) -> Int8Settings:
    """The settings with reduce_range decided: full-range weights where the CPU's int8 kernels add their products
    exactly (an int8 dot product on x86; every aarch64 CPU), 7-bit elsewhere.

    On x86 without VNNI (AVX2 only) ONNX Runtime adds pairs of u8 x s8 products in a saturating
    16-bit register: full-range weights lose the map there, 7-bit ones stay exact.
    """
    if settings.reduce_range is not None:
        return settings
    return replace(settings, reduce_range=cpu.full_range_int8_exact(machine or cpu.current()) is None)


def weight_range(settings: Int8Settings, machine: cpu.CpuInfo | None = None) -> dict:
    """What the engine's record says of its weights: "7-bit" or "full-range", and why."""
    decided = for_this_cpu(settings, machine)
    name = "7-bit" if decided.reduce_range else "full-range"
    if settings.reduce_range is not None:
        why = "asked for (--reduce-range / --full-range)"
    else:
        why = (cpu.full_range_int8_exact(machine or cpu.current())
               or "this CPU has no int8 dot product: its kernels add pairs of u8 x s8 products in a saturating "
                  "16-bit register, which 7-bit weights cannot overflow")
    return {"weight_range": name, "weight_range_why": why}


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


# ONNX Runtime's quantization and float16 tools (the quantize extra), and the distributions that bring them
QUANTIZE_TOOLS = {"onnx": ("onnx",), "onnxruntime.quantization": ("onnxruntime", "onnxruntime-gpu")}
DEFAULT = Int8Settings()


def _blocks(ctx, param, value: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(b) for b in value.split(",") if b.strip())
    except ValueError:
        raise click.BadParameter(f"expected block numbers like 1,12, got {value!r}") from None
    if any(b < 1 for b in blocks):
        raise click.BadParameter("block numbers start at 1")
    return blocks


# options OpenVINO int8 (openvino_int8.py) understands too: it lists these very objects, so they appear once
PER_CHANNEL = click.option("--per-channel/--per-tensor", default=DEFAULT.per_channel, help="int8 weight scales.")
REDUCE_RANGE = click.option(
    "--reduce-range/--full-range", default=None,
    help="7-bit or 8-bit int8 weights (ONNX Runtime; for OpenVINO: NNCF's overflow fix on every layer, "
         "or on the first only). CPUs without VNNI (AVX2 only) saturate on full-range weights. "
         "[default: full-range where this CPU has VNNI or ARM dot product, else 7-bit]")
CALIBRATION_FRAMES = click.option(
    "--calibration-frames", type=Whole(1, 10_000), default=None,
    help=f"Static int8 and OpenVINO int8: frames the activation ranges come from. "
         f"[default: {DEFAULT.calibration_frames}]")


class Int8Builder(Builder):
    """The table row for int8: made for, and guarded on, the CPU provider."""

    backend = "onnxruntime"
    precision = "int8"
    format = FORMAT_ONNX
    title = "ONNX Runtime int8"
    guard_device = "cpu"
    settings_type = Int8Settings
    packages = QUANTIZE_TOOLS
    options = (
        click.option("--method", type=click.Choice(QUANT_METHODS), default=DEFAULT.method,
                     help="int8: dynamic (activation ranges per frame) or static (from calibration frames)."),
        PER_CHANNEL,
        REDUCE_RANGE,
        click.option("--format", "quant_format", type=click.Choice(QUANT_FORMATS), default=DEFAULT.quant_format,
                     help="Static int8 graph format."),
        click.option("--quantize-attention", is_flag=True,
                     help="Also quantise attention's activation x activation products."),
        click.option("--fp32-blocks", default="", callback=_blocks,
                     help="Transformer blocks (1-based) to keep in fp32, e.g. 1,12."),
        CALIBRATION_FRAMES,
    )

    def settings(self, values: dict) -> Int8Settings:
        return Int8Settings(method=values["method"], per_channel=values["per_channel"],
                            reduce_range=values["reduce_range"], quant_format=values["quant_format"],
                            quantize_attention=values["quantize_attention"], fp32_blocks=values["fp32_blocks"],
                            calibration_frames=values["calibration_frames"] or DEFAULT.calibration_frames)

    def calibration_frames(self, settings: Int8Settings) -> int:
        return settings.calibration_frames if settings.method == "static" else 0

    def describe(self, settings: Int8Settings) -> str:
        weights = weight_range(settings)
        return (f"{settings.method}, per-{'channel' if settings.per_channel else 'tensor'}, "
                f"{weights['weight_range']} weights; {weights['weight_range_why']}")

    def make(self, fp32: Path, out: Path, settings: Int8Settings, frames: FrameSets, input_name: str) -> None:
        reader = frame_reader(frames.calibration, input_name) if settings.method == "static" else None
        make_int8(fp32, out, for_this_cpu(settings), reader)

    def record(self, settings: Int8Settings) -> dict:
        return {**asdict(for_this_cpu(settings)), **weight_range(settings)}


BUILDER = Int8Builder()
