"""`winclip-export`: write a verified engine bundle for an open_clip backbone."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from winclip.export.options import ExportOptions
from winclip.runtime.command import CONTEXT, Command, Finite, Whole, setup_logging
from winclip.runtime.defaults import EXPORTERS, OPSET_RANGE, TEXT_ENSEMBLES
from winclip.runtime.errors import WinclipError, install_hint

DEFAULTS = ExportOptions()


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--backbone", default=DEFAULTS.backbone,
              help="Registry alias (ViT-B-16+) or any open_clip ViT model name.")
@click.option("--pretrained", default=None, metavar="TAG|PATH|none",
              help="open_clip pretrained tag (downloaded when online), a local checkpoint "
                   "(.pt/.pth/.bin/.safetensors), or 'none' for random weights (to try every command without "
                   "the checkpoint: scores mean nothing). [default: the backbone's default tag]")
@click.option("--seed", type=Whole(0, 2**32 - 1), default=DEFAULTS.seed,
              help="With --pretrained none: seed of the random weights (one seed, one bundle).")
@click.option("--object", "objects", multiple=True, default=tuple(DEFAULTS.objects),
              help="Object name for the text prompts; repeat for several ('metal_nut' -> 'metal nut').")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULTS.out,
              help="Bundle directory to write.")
@click.option("--opset", type=Whole(*OPSET_RANGE), default=DEFAULTS.opset, help="ONNX opset.")
@click.option("--exporter", type=click.Choice(EXPORTERS), default=DEFAULTS.exporter,
              help="torch ONNX exporter: auto = TorchScript-based while torch has it, else dynamo.")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--scales", default=",".join(map(str, DEFAULTS.scales)), help="Window scales, comma separated.")
@click.option("--stride", type=Whole(1, 64), default=DEFAULTS.stride, help="Window stride in patches.")
@click.option("--temperature", type=Finite(0.0, 100.0, min_open=True), default=DEFAULTS.temperature,
              help="Softmax temperature recorded as the scoring default.")
@click.option("--text-ensemble", type=click.Choice(TEXT_ENSEMBLES), default=DEFAULTS.text_ensemble,
              help="How prompt embeddings are averaged into a prototype.")
@click.option("--patch-layer", type=Whole(1, 1024), default=None,
              help="Block whose patch tokens form the few-shot patch features. [default: last]")
@click.option("--patch-ln-post", is_flag=True, help="Apply ln_post to the patch features.")
@click.option("--precision", "precisions", default="fp32",
              help="Engines to write, comma separated: fp32 always, plus int8 (CPU) and/or fp16 (CUDA), each "
                   "guarded against fp32 on --calibration frames.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Folder of the line's real frames, for the int8/fp16 engines' accuracy guard.")
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Also write a Triton model repository of the bundle's engine into DIR (for NVIDIA's server "
                   "images; winclip-serve BUNDLE --write-repo DIR sets its batching and target).")
@click.option("--model-config", "model_configs", multiple=True, type=click.Path(path_type=Path),
              help="Extra open_clip model config JSON (custom architectures); repeatable.")
def main(triton_repo, model_configs, **values):
    """Export WinCLIP's windowed CLIP visual encoder and text prototypes as an engine bundle.

    The bundle holds one ONNX graph (image, window and patch embeddings for a
    batch of frames), the cached prompt-ensemble embeddings per --object and a
    versioned manifest. The graph is checked against torch in onnxruntime
    before the bundle is moved into place.
    """
    try:
        from winclip.export.backbones import register_model_configs
        from winclip.export.exporter import export_bundle
    except ImportError as exc:
        raise click.ClickException(
            f"export dependencies missing ({exc.name}): {install_hint('export,cpu')}") from None
    options = export_options(values)
    setup_logging()
    try:
        register_model_configs(model_configs)
        export_bundle(options)
        if triton_repo is not None:
            from winclip.serve.repository import write_repository

            write_repository(options.out, triton_repo)
    except WinclipError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # permissions, a full disk: one line, nothing left behind
        raise click.ClickException(f"export failed: {exc}") from None
    click.echo(str(options.out))


def export_options(values: dict) -> ExportOptions:
    """The ExportOptions of the command's values (each option names its field); --scales and --precision are
    comma-separated lists."""
    scales = values["scales"]
    try:
        scale_list = tuple(int(s) for s in scales.split(",") if s.strip())
    except ValueError:
        raise click.ClickException(f"--scales must be integers like 2,3, got {scales!r}") from None
    return ExportOptions(**{**values, "objects": list(values["objects"]), "scales": scale_list,
                            "precisions": tuple(p.strip() for p in values["precisions"].split(",") if p.strip())})

if __name__ == "__main__":
    sys.exit(main())
