"""fp16 engines for CUDA: onnxruntime's float16 converter, fp32 inputs and outputs, sensitive ops kept in fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from winclip.calibration.engines.frames import FrameSets
from winclip.calibration.engines.int8 import need_quantize_tools
from winclip.runtime.contract import FORMAT_ONNX

FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")


@dataclass
class Fp16Settings:
    """fp16 has no knobs today: LayerNorm, Softmax and reductions always stay in fp32."""

    def check(self, layers: int) -> None:
        pass


def make_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write the fp16 graph (fp32 inputs and outputs; LayerNorm, Softmax, reductions in fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32])
    onnx.save(model, str(out_path))


class Fp16Builder:
    """The table row for fp16: made for CUDA, guarded on CUDA where there is one."""

    backend = "onnxruntime"
    precision = "fp16"
    format = FORMAT_ONNX
    guard_device = "auto"
    settings_type = Fp16Settings

    def check_tools(self) -> None:
        need_quantize_tools()

    def calibration_frames(self, settings: Fp16Settings) -> int:
        return 0

    def describe(self, settings: Fp16Settings) -> str:
        return ""

    def make(self, fp32: Path, out: Path, settings: Fp16Settings, frames: FrameSets, input_name: str) -> None:
        make_fp16(fp32, out)

    def record(self, settings: Fp16Settings) -> dict:
        return {"keep_fp32_ops": list(FP16_KEEP_FP32)}


BUILDER = Fp16Builder()
