"""Export pipeline: backbone -> text prototypes + windowed ONNX graph -> verified bundle."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import open_clip
import torch

from winclip.export.backbones import LoadedBackbone, load_backbone
from winclip.export.errors import ExportError
from winclip.export.options import ExportOptions
from winclip.export.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES
from winclip.export.text import text_prototypes
from winclip.export.verify import verify_graph
from winclip.export.windowed_visual import WindowedVisual
from winclip.runtime import contract, defaults
from winclip.runtime.atomic import replace_dir
from winclip.runtime.bundle import sha256_file, write_manifest
from winclip.runtime.errors import first_line, install_hint
from winclip.runtime.provenance import package_versions


log = logging.getLogger(__name__)

def _versions() -> dict[str, str]:
    return package_versions("winclip-edge", "torch", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu")


def check_inputs(opts: ExportOptions) -> list[str]:
    """Fail fast on bad input, before minutes of model loading."""
    objects = []
    for raw in opts.objects:
        try:
            name = contract.normalize_object_name(raw)
        except ValueError:
            raise ExportError(f"object name {raw!r} is empty") from None
        if name not in objects:
            objects.append(name)
    if not objects:
        raise ExportError("give at least one --object")
    files = [contract.text_file_name(o) for o in objects]
    if len(set(files)) != len(files):
        raise ExportError(f"object names {objects} collide as file names; rename one")
    out = Path(opts.out).resolve()
    if out.exists():
        if not opts.force:
            raise ExportError(f"output {out} exists; pass --force to replace it")
        if not out.is_dir():
            raise ExportError(f"output {out} exists and is not a directory")
        if any(out.iterdir()) and not _is_bundle(out):
            raise ExportError(f"output {out} is a non-empty folder that is not a bundle; --force replaces bundles only")
    lo, hi = defaults.OPSET_RANGE
    if not lo <= opts.opset <= hi:
        raise ExportError(f"opset {opts.opset} is not supported; use {lo}..{hi}")
    if opts.exporter not in defaults.EXPORTERS:
        raise ExportError(f"unknown exporter {opts.exporter!r}; use one of {', '.join(defaults.EXPORTERS)}")
    if not opts.scales or len(set(opts.scales)) != len(opts.scales) or min(opts.scales) < 1:
        raise ExportError(f"window scales must be distinct positive integers, got {list(opts.scales)}")
    if opts.stride < 1:
        raise ExportError(f"window stride must be >= 1, got {opts.stride}")
    if opts.text_ensemble not in defaults.TEXT_ENSEMBLES:
        raise ExportError(f"unknown text ensemble {opts.text_ensemble!r}; use one of {', '.join(defaults.TEXT_ENSEMBLES)}")
    try:
        defaults.check_temperature(opts.temperature)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    unknown = [p for p in opts.precisions if p not in defaults.PRECISIONS]
    if unknown or "fp32" not in opts.precisions:
        raise ExportError(f"precisions must include fp32 and come from {', '.join(defaults.PRECISIONS)}, "
                          f"got {list(opts.precisions)}")
    if len(opts.precisions) > 1:
        if opts.calibration is None or not Path(opts.calibration).is_dir():
            raise ExportError("int8/fp16 engines need --calibration DIR: real frames of the line for their accuracy guard")
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError:
            raise ExportError(f"int8/fp16 engines need the quantization tools: {install_hint('quantize')}") from None
    return objects


def _is_bundle(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / contract.MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == contract.BUNDLE_FORMAT


def export_onnx(wrapper: WindowedVisual, path: Path, opset: int, exporter: str = "auto") -> tuple[str, int]:
    """Write the graph; returns (exporter used, opset written)."""
    if exporter == "auto":
        try:
            return export_onnx(wrapper, path, opset, "torchscript")
        except ExportError:
            path.unlink(missing_ok=True)
            return export_onnx(wrapper, path, max(opset, defaults.DYNAMO_MIN_OPSET), "dynamo")
    names = contract.output_names(wrapper.scales)
    size = wrapper.visual.image_size
    # A batch of 2 keeps the traced batch axis symbolic.
    example = torch.randn(2, 3, int(size[0]), int(size[1]))
    common = dict(input_names=[contract.INPUT_NAME], output_names=names, opset_version=opset)
    if exporter == "torchscript":
        kwargs = dict(dynamic_axes={n: {0: contract.BATCH_AXIS} for n in [contract.INPUT_NAME, *names]},
                      do_constant_folding=True, dynamo=False)
    elif exporter == "dynamo":
        if opset < defaults.DYNAMO_MIN_OPSET:
            raise ExportError(f"the dynamo exporter writes opset {defaults.DYNAMO_MIN_OPSET} or later, not {opset}")
        # one self-contained file: the runtime loads graphs from checked bytes only
        kwargs = dict(dynamic_shapes={contract.INPUT_NAME: {0: torch.export.Dim(contract.BATCH_AXIS)}}, dynamo=True,
                      external_data=False, verbose=False)
    else:
        raise ExportError(f"unknown exporter {exporter!r}")
    # nn.MultiheadAttention's fused fast path has no ONNX symbolic: switch it off
    # for the trace (tracing with grad on instead would keep every activation,
    # several GB for ViT-B-16+).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (example,), str(path), **common, **kwargs)
    except Exception as exc:
        raise ExportError(f"ONNX export failed ({exporter}): {first_line(exc)}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return exporter, opset


def build_manifest(opts, loaded: LoadedBackbone, wrapper: WindowedVisual, objects: dict[str, contract.FileRef],
                   engine: contract.Engine) -> contract.Manifest:
    pre = open_clip.get_model_preprocess_cfg(loaded.model)
    return contract.Manifest(
        backbone={"name": loaded.backbone, "open_clip_model": loaded.open_clip_model, "weights": loaded.weights},
        preprocess=contract.Preprocess(input_size=tuple(int(s) for s in wrapper.visual.image_size),
                                       mean=tuple(float(m) for m in pre["mean"]),
                                       std=tuple(float(s) for s in pre["std"])),
        patch_size=tuple(int(p) for p in wrapper.visual.patch_size),
        grid=tuple(wrapper.grid),
        scales=tuple(wrapper.scales),
        stride=wrapper.stride,
        embed_dim=wrapper.embed_dim,
        width=wrapper.width,
        layers=wrapper.n_layers,
        mlp_width=wrapper.mlp_width,
        work_elimination=wrapper.eliminate,
        patch_layer=wrapper.patch_layer,
        patch_ln_post=wrapper.patch_ln_post,
        engines=(engine,),
        objects=objects,
        text_ensemble=opts.text_ensemble,
        prompts={"normal_states": list(NORMAL_STATES), "anomalous_states": list(ANOMALOUS_STATES),
                 "templates": list(TEMPLATES)},
        temperature=opts.temperature,
        versions=_versions(),
        created=_now(),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def export_bundle(opts: ExportOptions) -> Path:
    """Write a verified engine bundle for `opts` (see ExportOptions) and return its path.

    Loads the backbone and its weights, computes the (2, D) text prototypes of
    each object, traces the windowed visual graph (input images (B, 3, H, W)
    float32, normalised; outputs per export/windowed_visual.py), checks it
    against torch in onnxruntime, adds any int8/fp16 engines asked for (each
    guarded on real frames), and moves the bundle into place only when all of
    that succeeded: a failure leaves nothing behind. Raises ExportError.
    """
    names = check_inputs(opts)
    out = Path(opts.out).resolve()  # so that --out . still has a real parent for the temp folder
    t0 = time.perf_counter()
    log.info(f"loading {opts.backbone} (weights: {opts.pretrained or 'default tag'})")
    loaded = load_backbone(opts.backbone, opts.pretrained, opts.seed)
    try:
        wrapper = WindowedVisual(loaded.model.visual, opts.scales, opts.stride, opts.patch_layer, opts.patch_ln_post).eval()
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / contract.TEXT_DIR).mkdir(parents=True)
        objects = {}
        for name in names:
            log.info(f"text prototypes for {name!r}")
            protos = text_prototypes(loaded.model, loaded.open_clip_model, name, opts.text_ensemble)
            rel = contract.text_file_name(name)
            np.save(tmp / rel, protos, allow_pickle=False)
            objects[name] = contract.FileRef(rel, sha256_file(tmp / rel))
        log.info(f"tracing the windowed visual graph (opset {opts.opset}, exporter {opts.exporter})")
        graph = tmp / contract.FP32_ENGINE_FILE
        exporter, opset = export_onnx(wrapper, graph, opts.opset, opts.exporter)
        log.info("verifying the ONNX graph against torch in onnxruntime")
        verification = verify_graph(wrapper, graph, opts.tolerance)
        stray = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                       if p.is_file() and p != graph and p.parent != tmp / contract.TEXT_DIR)
        if stray:  # e.g. external-data files: the runtime would refuse such a graph
            raise ExportError(f"the exporter wrote unexpected files {stray}; the graph must be one self-contained file")
        engine = contract.Engine(
            file=contract.FP32_ENGINE_FILE, precision="fp32", sha256=sha256_file(graph),
            made_by={"tool": "winclip-export", "method": "export", "exporter": exporter, "opset": opset,
                     "created": _now()},
            verification=verification)
        manifest = build_manifest(opts, loaded, wrapper, objects, engine)
        write_manifest(tmp, manifest)
        for precision in opts.precisions:
            if precision != "fp32":  # made and guarded in the temporary bundle: all or nothing
                _add_engine(tmp, precision, opts.calibration)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"bundle written to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def _add_engine(bundle: Path, precision: str, calibration: Path) -> None:
    from winclip.calibration.engines.build import QuantizeError, add_engine

    try:
        add_engine(bundle, precision, Path(calibration))
    except QuantizeError as exc:
        raise ExportError(str(exc).replace("the bundle is unchanged", "nothing was written")) from None


