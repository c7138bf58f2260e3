"""Random-weight open_clip models, checkpoints and bundles for the tests (through conftest.py).

Pretrained weights cannot be downloaded everywhere the project is built, so the
tests export bundles from seeded random-init checkpoints, through the real
checkpoint-loading path. Not part of the installed package: the benchmarks make
their random weights with winclip-export's own `--pretrained none`.
"""

from __future__ import annotations

from pathlib import Path

VIT_B16_PLUS = "ViT-B-16-plus-240"  # open_clip's name for the ViT-B-16+ architecture


def make_model(name: str, seed: int = 0, configs=()):
    """A seeded random-init open_clip model (configs: extra architecture JSON files)."""
    import open_clip
    import torch

    from winclip.export.backbones import register_model_configs, quiet_random_init

    register_model_configs(configs)
    torch.manual_seed(seed)
    with quiet_random_init():
        return open_clip.create_model(name, pretrained=None).eval()


def save_checkpoint(model, path: Path) -> Path:
    import torch

    torch.save(model.state_dict(), path)
    return path


def export_from_checkpoint(out: Path, checkpoint: Path, backbone: str, objects=("bottle",), configs=(),
                           **options) -> Path:
    """Export a bundle from a checkpoint file, quietly; options are ExportOptions fields."""
    from winclip.export.backbones import register_model_configs
    from winclip.export.exporter import ExportOptions, export_bundle

    register_model_configs(configs)
    opts = ExportOptions(out=out, backbone=backbone, pretrained=str(checkpoint), objects=list(objects), **options)
    return export_bundle(opts)
