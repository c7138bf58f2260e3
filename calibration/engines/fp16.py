"""fp16 engines for CUDA: onnxruntime's float16 converter, fp32 inputs and outputs, sensitive ops kept in fp32."""

from __future__ import annotations

from pathlib import Path

from winclip.calibration.engines.base import Builder, NoSettings
from winclip.calibration.engines.frames import FrameSets
from winclip.calibration.engines.int8 import QUANTIZE_TOOLS
from winclip.runtime.contract import FORMAT_ONNX

FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")


def make_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write the fp16 graph (fp32 inputs and outputs; LayerNorm, Softmax, reductions in fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32])
    onnx.save(model, str(out_path))


class Fp16Builder(Builder):
    """The table row for fp16: made for CUDA, guarded on CUDA where there is one."""

    backend = "onnxruntime"
    precision = "fp16"
    format = FORMAT_ONNX
    title = "ONNX Runtime fp16"
    guard_device = "auto"
    settings_type = NoSettings  # no knobs today: LayerNorm, Softmax and reductions always stay in fp32
    packages = QUANTIZE_TOOLS

    def make(self, fp32: Path, out: Path, settings: NoSettings, frames: FrameSets, input_name: str) -> None:
        make_fp16(fp32, out)

    def record(self, settings: NoSettings) -> dict:
        return {"keep_fp32_ops": list(FP16_KEEP_FP32)}


BUILDER = Fp16Builder()
