"""Export pipeline: backbone -> text prototypes + windowed ONNX graph -> verified bundle."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch

from winclip.export.backbones import ExportError, LoadedBackbone, load_backbone
from winclip.export.options import EXPORTERS, ExportOptions
from winclip.export.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES
from winclip.export.text import text_prototypes
from winclip.export.verify import verify_graph
from winclip.export.windowed_visual import WindowedVisual
from winclip.runtime import bundle as schema
from winclip.runtime.geometry import window_count


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("winclip-edge", "torch", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_inputs(opts: ExportOptions) -> list[str]:
    """Fail fast on bad input, before minutes of model loading."""
    objects = []
    for raw in opts.objects:
        try:
            name = schema.normalize_object_name(raw)
        except ValueError:
            raise ExportError(f"object name {raw!r} is empty") from None
        if name not in objects:
            objects.append(name)
    if not objects:
        raise ExportError("give at least one --object")
    files = [schema.text_file_name(o) for o in objects]
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
    if not 14 <= opts.opset <= 20:
        raise ExportError(f"opset {opts.opset} is not supported; use 14..20")
    if opts.exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {opts.exporter!r}; use one of {', '.join(EXPORTERS)}")
    if not opts.scales or len(set(opts.scales)) != len(opts.scales) or min(opts.scales) < 1:
        raise ExportError(f"window scales must be distinct positive integers, got {list(opts.scales)}")
    if not opts.temperature > 0:
        raise ExportError(f"temperature must be > 0, got {opts.temperature}")
    return objects


def _is_bundle(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / schema.MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == schema.BUNDLE_FORMAT


def export_onnx(wrapper: WindowedVisual, path: Path, opset: int, exporter: str = "auto") -> tuple[str, int]:
    """Write the graph; returns (exporter used, opset written)."""
    if exporter == "auto":
        try:
            return export_onnx(wrapper, path, opset, "torchscript")
        except ExportError:
            path.unlink(missing_ok=True)
            return export_onnx(wrapper, path, max(opset, 18), "dynamo")
    names = schema.output_names(list(wrapper.scales))
    size = wrapper.visual.image_size
    # A batch of 2 keeps the traced batch axis symbolic.
    example = torch.randn(2, 3, int(size[0]), int(size[1]))
    common = dict(input_names=[schema.INPUT_NAME], output_names=names, opset_version=opset)
    if exporter == "torchscript":
        kwargs = dict(dynamic_axes={n: {0: "batch"} for n in [schema.INPUT_NAME, *names]},
                      do_constant_folding=True, dynamo=False)
    elif exporter == "dynamo":
        if opset < 18:
            raise ExportError(f"the dynamo exporter writes opset 18 or later, not {opset}")
        # one self-contained file: the runtime loads graphs from checked bytes only
        kwargs = dict(dynamic_shapes={schema.INPUT_NAME: {0: torch.export.Dim("batch")}}, dynamo=True,
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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ExportError(f"ONNX export failed ({exporter}): {first}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return exporter, opset


def build_manifest(opts, loaded: LoadedBackbone, wrapper: WindowedVisual, objects, text_files,
                   verification: dict, files: dict[str, str], written: tuple[str, int]) -> dict:
    pre = open_clip.get_model_preprocess_cfg(loaded.model)
    size = [int(s) for s in wrapper.visual.image_size]
    scales = list(wrapper.scales)
    out_shapes = {schema.IMAGE_EMBEDDING: ["batch", wrapper.embed_dim]}
    for k in scales:
        out_shapes[schema.window_output_name(k)] = ["batch", window_count(wrapper.grid, k, wrapper.stride), wrapper.embed_dim]
    out_shapes[schema.PATCH_FEATURES] = ["batch", wrapper.grid[0] * wrapper.grid[1], wrapper.width]
    return {
        "format": schema.BUNDLE_FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": {"name": loaded.backbone, "open_clip_model": loaded.open_clip_model, "weights": loaded.weights},
        "preprocess": {
            "input_size": size,
            "resize": schema.RESIZE_SQUASH,
            "interpolation": schema.INTERPOLATION_BICUBIC,
            "antialias": True,
            "channel_order": schema.CHANNELS_RGB,
            "mean": [float(m) for m in pre["mean"]],
            "std": [float(s) for s in pre["std"]],
        },
        "patch_size": [int(p) for p in wrapper.visual.patch_size],
        "grid": list(wrapper.grid),
        "windows": {
            "scales": scales,
            "stride": wrapper.stride,
            "counts": {str(k): window_count(wrapper.grid, k, wrapper.stride) for k in scales},
        },
        "dims": {"embed": wrapper.embed_dim, "width": wrapper.width, "layers": len(wrapper.visual.transformer.resblocks)},
        "patch_features": {"layer": wrapper.patch_layer, "ln_post": wrapper.patch_ln_post},
        "graph": {
            "file": schema.GRAPH_NAME,
            "precision": "fp32",
            "opset": written[1],
            "exporter": written[0],
            "inputs": {schema.INPUT_NAME: ["batch", 3, *size]},
            "outputs": out_shapes,
        },
        "text": {
            "ensemble": opts.text_ensemble,
            "normal_states": list(NORMAL_STATES),
            "anomalous_states": list(ANOMALOUS_STATES),
            "templates": list(TEMPLATES),
            "objects": dict(zip(objects, text_files)),
        },
        "scoring": {"temperature": opts.temperature},
        "verification": verification,
        "versions": _versions(),
        "files": files,
    }


def export_bundle(opts: ExportOptions, log: Callable[[str], None] = print) -> Path:
    objects = check_inputs(opts)
    out = Path(opts.out).resolve()  # so that --out . still has a real parent for the temp folder
    t0 = time.perf_counter()
    log(f"loading {opts.backbone} (weights: {opts.pretrained or 'default tag'})")
    loaded = load_backbone(opts.backbone, opts.pretrained)
    try:
        wrapper = WindowedVisual(loaded.model.visual, opts.scales, opts.stride, opts.patch_layer, opts.patch_ln_post).eval()
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / schema.TEXT_DIR).mkdir(parents=True)
        text_files = []
        for name in objects:
            log(f"text prototypes for {name!r}")
            protos = text_prototypes(loaded.model, loaded.open_clip_model, name, opts.text_ensemble)
            rel = schema.text_file_name(name)
            np.save(tmp / rel, protos, allow_pickle=False)
            text_files.append(rel)
        log(f"tracing the windowed visual graph (opset {opts.opset}, exporter {opts.exporter})")
        graph = tmp / schema.GRAPH_NAME
        written = export_onnx(wrapper, graph, opts.opset, opts.exporter)
        log("verifying the ONNX graph against torch in onnxruntime")
        verification = verify_graph(wrapper, graph, opts.tolerance)
        files = {
            str(p.relative_to(tmp).as_posix()): schema.sha256_file(p)
            for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        stray = sorted(set(files) - {schema.GRAPH_NAME, *text_files})
        if stray:  # e.g. external-data files: the runtime would refuse such a graph
            raise ExportError(f"the exporter wrote unexpected files {stray}; the graph must be one self-contained file")
        manifest = build_manifest(opts, loaded, wrapper, objects, text_files, verification, files, written)
        (tmp / schema.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"bundle written to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished bundle into place; an old one is removed only afterwards."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
