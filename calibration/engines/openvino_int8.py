"""int8 OpenVINO IR engines: NNCF post-training quantisation of the fp32 graph from the line's real frames.

The fp32 ONNX graph is read by OpenVINO, quantised by `nncf.quantize` (transformer
model type, SmoothQuant on the MatMuls) with an `nncf.Dataset` over the very
calibration frames the ONNX Runtime static path reads, and written as an IR
(.xml + .bin). The knobs that trade speed against the guard are named scopes
kept in floating point (the patch-feature branch, the first or last block,
attention's activation x activation products), the SmoothQuant alpha,
per-channel or per-tensor weights, and the number of calibration frames.
The engine runs on the OpenVINO backend and is guarded there.

The recipe depends on the CPU, as ONNX Runtime's weight range does: without an
int8 dot-product instruction (AVX2 only) OpenVINO's int8 kernels add u8 x s8
pairs in saturating 16-bit registers, and NNCF's default (its overflow fix on
the first layer only) failed the guard of ViT-B-16+ there (embedding cosine
0.983-0.985). NNCF's overflow fix on every layer halves the weights' range, as
7-bit weights do for ONNX Runtime: that is the recipe where the CPU has no VNNI. Run on
an emulated Haswell (benchmarks/guard_emulated.py), it passes the ViT-B-16+ guard as it
does with VNNI, where the default reproduces the real AVX2 box's failure.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click

from winclip.calibration.engines.base import Builder
from winclip.calibration.engines.errors import QuantizeError
from winclip.calibration.engines.frames import FrameSets
from winclip.calibration.engines.int8 import CALIBRATION_FRAMES, PER_CHANNEL, REDUCE_RANGE
from winclip.runtime import cpu
from winclip.runtime.command import Finite
from winclip.runtime.contract import FORMAT_OPENVINO_IR, PATCH_FEATURES, WEIGHTS_SUFFIX

PRESETS = ("performance", "mixed")  # symmetric activations, or asymmetric ones (NNCF's presets)
# NNCF's OverflowFix values: half-range weights on every layer, on the first only (NNCF's default), nowhere
OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")
# what a guard failure on a CPU without an int8 dot product tells the user to do instead
WITHOUT_VNNI = ("without VNNI this CPU's int8 kernels add in saturating 16-bit sums; use the ONNX Runtime int8 engine "
                "(7-bit weights)")
# ops whose inputs can be traced back to a constant weight through them
WEIGHT_PATH_OPS = ("Constant", "Convert", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "FakeQuantize")


def _ancestors(output) -> set[str]:
    """Friendly names of every op a model output depends on."""
    seen, stack = set(), [output.get_node()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return seen


def _has_constant_input(node) -> bool:
    for i in range(node.get_input_size()):
        source = node.input_value(i).get_node()
        while source.get_type_name() in WEIGHT_PATH_OPS:
            if source.get_type_name() == "Constant":
                return True
            source = source.input_value(0).get_node()
    return False


def _matmuls(model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]


def _block(model, block: int) -> list[str]:
    """The MatMuls of one 0-based transformer block in every pass (export names them /explicit.<i>[_k]/...)."""
    pattern = re.compile(rf"^/explicit\.{block}(_\d+)?/")
    return [op.get_friendly_name() for op in _matmuls(model) if pattern.match(op.get_friendly_name())]


def _patch_features(model) -> list[str]:
    """MatMuls only the patch features (and the whole-image pass they share) depend on, not the windows."""
    outputs = {port.get_any_name(): port for port in model.outputs}
    branch = _ancestors(outputs[PATCH_FEATURES])
    for name, port in outputs.items():
        if name.startswith("window_embeddings"):
            branch -= _ancestors(port)
    return [op.get_friendly_name() for op in _matmuls(model) if op.get_friendly_name() in branch]


def _attention(model) -> list[str]:
    """Attention's activation x activation MatMuls (queries x keys, softmax x values)."""
    return [op.get_friendly_name() for op in _matmuls(model) if not _has_constant_input(op)]


def _layers(model) -> int:
    return 1 + max((int(m.group(1)) for op in _matmuls(model)
                    if (m := re.match(r"^/explicit\.(\d+)", op.get_friendly_name()))), default=0)


# scope name -> the MatMuls of the fp32 model it keeps in floating point
IGNORE_SCOPES = {
    "patch-features": _patch_features,
    "first-block": lambda model: _block(model, 0),
    "last-block": lambda model: _block(model, _layers(model) - 1),
    "attention": _attention,
}


@dataclass
class NncfSettings:
    """How NNCF makes the int8 IR: the knobs the guard's numbers are tuned with."""

    calibration_frames: int = 8  # NNCF's subset size: real frames the activation ranges come from
    smooth_quant_alpha: float | None = None  # None: NNCF's transformer default; negative: SmoothQuant off
    per_channel: bool = True  # weight scales per output channel, or one per tensor
    ignore: tuple[str, ...] = ()  # names of IGNORE_SCOPES kept in floating point
    preset: str = "performance"  # performance (symmetric activations) | mixed (asymmetric)
    fast_bias_correction: bool = True
    overflow_fix: str | None = None  # one of OVERFLOW_FIXES; None: by the CPU (for_this_cpu)

    def check(self, layers: int) -> None:
        unknown = [s for s in self.ignore if s not in IGNORE_SCOPES]
        if unknown:
            raise QuantizeError(f"unknown scope {unknown[0]!r} to keep in floating point; use {', '.join(IGNORE_SCOPES)}")
        if self.preset not in PRESETS:
            raise QuantizeError(f"unknown preset {self.preset!r}; use {' or '.join(PRESETS)}")
        if self.overflow_fix is not None and self.overflow_fix not in OVERFLOW_FIXES:
            raise QuantizeError(f"unknown overflow fix {self.overflow_fix!r}; use {', '.join(OVERFLOW_FIXES)}")
        if self.calibration_frames < 1:
            raise QuantizeError("NNCF needs at least one calibration frame")
        if self.smooth_quant_alpha is not None and self.smooth_quant_alpha > 1:
            raise QuantizeError(f"SmoothQuant alpha must be at most 1 (negative: off), got {self.smooth_quant_alpha}")


def for_this_cpu(settings: NncfSettings, machine: cpu.CpuInfo | None = None) -> NncfSettings:
    """The settings with the overflow fix decided: on every layer unless the CPU has an int8 dot product
    (VNNI), where NNCF's default (first layer only) keeps more of each weight's range."""
    if settings.overflow_fix is not None:
        return settings
    dot = (machine or cpu.current()).int8_dot
    return replace(settings, overflow_fix="first_layer_only" if dot else "enable")


def ignored_nodes(model, settings: NncfSettings) -> list[str]:
    """The MatMul names the settings' scopes keep in floating point, each once."""
    return list(dict.fromkeys(name for scope in settings.ignore for name in IGNORE_SCOPES[scope](model)))


def make_openvino_int8(fp32_path: Path, out_xml: Path, settings: NncfSettings, frames: FrameSets) -> int:
    """Write the int8 IR (out_xml and its .bin) of the fp32 ONNX graph; returns how many MatMuls stayed float."""
    BUILDER.check_tools()
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters, OverflowFix,
                                                       QuantizationParameters)

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step INFO lines are not the user's business
    model = ov.Core().read_model(str(fp32_path))
    ignored = ignored_nodes(model, settings)
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(for_this_cpu(settings).overflow_fix))
    if settings.smooth_quant_alpha is not None:
        advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=settings.smooth_quant_alpha)
    if not settings.per_channel:
        advanced.weights_quantization_params = QuantizationParameters(per_channel=False)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: the command's stdout is its result
        quantized = nncf.quantize(
            model, nncf.Dataset(frames.calibration), preset=nncf.QuantizationPreset(settings.preset),
            model_type=nncf.ModelType.TRANSFORMER, subset_size=len(frames.calibration),
            fast_bias_correction=settings.fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
            advanced_parameters=advanced)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    if not out_xml.with_suffix(WEIGHTS_SUFFIX).is_file():
        raise QuantizeError("OpenVINO wrote no weights file beside the IR")
    return len(ignored)


NNCF = NncfSettings()


class OpenVinoInt8Builder(Builder):
    """The table row for OpenVINO int8: an IR made with NNCF, guarded on the OpenVINO backend (CPU)."""

    backend = "openvino"
    precision = "int8"
    format = FORMAT_OPENVINO_IR
    title = "OpenVINO int8"
    guard_device = "cpu"
    settings_type = NncfSettings
    extra = "openvino"
    packages = {"openvino": ("openvino",), "nncf": ("nncf",)}
    side_files = (WEIGHTS_SUFFIX,)  # the IR's weights, beside its .xml graph
    options = (
        CALIBRATION_FRAMES,
        click.option("--smooth-quant-alpha", type=Finite(-1.0, 1.0), default=None,
                     help="OpenVINO int8: SmoothQuant alpha for the MatMuls (negative: off). [default: NNCF's]"),
        click.option("--keep-float", type=click.Choice(tuple(IGNORE_SCOPES)), multiple=True,
                     help="OpenVINO int8: keep this part in floating point; repeatable."),
        click.option("--preset", type=click.Choice(PRESETS), default=NNCF.preset,
                     help="OpenVINO int8: symmetric (performance) or asymmetric (mixed) activations."),
        PER_CHANNEL,
        REDUCE_RANGE,
    )

    def settings(self, values: dict) -> NncfSettings:
        fix = None if values["reduce_range"] is None else ("enable" if values["reduce_range"] else "first_layer_only")
        return NncfSettings(calibration_frames=values["calibration_frames"] or NNCF.calibration_frames,
                            per_channel=values["per_channel"], smooth_quant_alpha=values["smooth_quant_alpha"],
                            ignore=tuple(values["keep_float"]), preset=values["preset"], overflow_fix=fix)

    def calibration_frames(self, settings: NncfSettings) -> int:
        return settings.calibration_frames

    def describe(self, settings: NncfSettings) -> str:
        settings, dot = for_this_cpu(settings), cpu.current().int8_dot
        alpha = "default" if settings.smooth_quant_alpha is None else (
            "off" if settings.smooth_quant_alpha < 0 else settings.smooth_quant_alpha)
        kept = f", {'+'.join(settings.ignore)} kept float" if settings.ignore else ""
        return (f"NNCF, {settings.calibration_frames} frames, SmoothQuant {alpha}, "
                f"per-{'channel' if settings.per_channel else 'tensor'}{kept}, overflow fix "
                f"{settings.overflow_fix.replace('_', ' ')} (this CPU has {dot or 'no int8 dot product'})")

    def make(self, fp32: Path, out: Path, settings: NncfSettings, frames: FrameSets, input_name: str) -> dict:
        return {"float_matmuls": make_openvino_int8(fp32, out, settings, frames)}

    def guard_compute(self) -> str:
        """The compute precision the guard runs the engine at, recorded with its numbers: bf16 for the
        floating-point parts where this CPU has it (OpenVINO's own default there, about 5-8 % faster),
        f32 elsewhere. A box without bf16 runs the engine at f32, closer to the fp32 reference."""
        from winclip.runtime.backends.openvino import cpu_computes_bf16

        return "bf16" if cpu_computes_bf16() else "f32"

    def failure_hint(self) -> str | None:
        """What to do when the guard fails: on a CPU without VNNI even the overflow fix may not save it."""
        return None if cpu.current().int8_dot else WITHOUT_VNNI

    def record(self, settings: NncfSettings) -> dict:
        return {**asdict(for_this_cpu(settings)), "ignore": list(settings.ignore), "model_type": "transformer"}


BUILDER = OpenVinoInt8Builder()
