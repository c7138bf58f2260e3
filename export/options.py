"""Export options: what `winclip-export` takes, with the project's defaults.

Kept free of torch so that `winclip-export --help` works on a runtime-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from winclip.runtime import defaults


@dataclass
class ExportOptions:
    """What `winclip-export` takes (each field is a command-line option), with the project's defaults."""

    out: Path = Path("bundles/winclip-vitb16plus")
    backbone: str = "ViT-B-16+"
    pretrained: str | None = None  # None: the backbone's default tag
    seed: int = defaults.RANDOM_WEIGHTS_SEED  # the random weights of pretrained 'none'
    objects: list[str] = field(default_factory=lambda: ["object"])
    opset: int = defaults.OPSET
    exporter: str = "auto"
    force: bool = False
    scales: tuple[int, ...] = defaults.WINDOW_SCALES
    stride: int = defaults.WINDOW_STRIDE
    temperature: float = defaults.TEMPERATURE  # the scoring default written to the manifest
    text_ensemble: str = defaults.TEXT_ENSEMBLE
    patch_layer: int | None = None  # None: the last block
    patch_ln_post: bool = False
    tolerance: float = 1e-4  # ONNX vs torch, see verify.py
    precisions: tuple[str, ...] = ("fp32",)  # int8 / fp16 engines are added by winclip-quantize's code
    calibration: Path | None = None  # real frames for the quantized engines' accuracy guard (and static int8)
