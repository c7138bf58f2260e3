"""Export options and their defaults: one place, read by the CLI and the exporter.

Kept free of torch so that `winclip-export --help` works on a runtime-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TEXT_ENSEMBLES = ("normalized_mean", "raw_mean")
# auto: torch's TorchScript-based exporter while torch still ships it (fastest here,
# ViT-B-16+ in ~80 s), else the dynamo exporter (opset >= 18).
EXPORTERS = ("auto", "torchscript", "dynamo")


@dataclass
class ExportOptions:
    out: Path = Path("bundles/winclip-vitb16plus")
    backbone: str = "ViT-B-16+"
    pretrained: str | None = None  # None: the backbone's default tag
    objects: list[str] = field(default_factory=lambda: ["object"])
    opset: int = 17
    exporter: str = "auto"
    force: bool = False
    scales: tuple[int, ...] = (2, 3)
    stride: int = 1
    temperature: float = 0.07  # the scoring default written to the manifest
    text_ensemble: str = "normalized_mean"
    patch_layer: int | None = None  # None: the last block
    patch_ln_post: bool = False
    tolerance: float = 1e-4  # ONNX vs torch, see verify.py
