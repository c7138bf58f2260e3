"""Backbone registry and weight loading.

The registry is data: a short alias maps to an open_clip architecture and its
default pretrained tag. Any other open_clip ViT name works too; grid, widths and
dims are always read from the built model.
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import VisionTransformer

from winclip.export.errors import ExportError
from winclip.runtime.bundle import sha256_file
from winclip.runtime.defaults import RANDOM_WEIGHTS_SEED
from winclip.runtime.errors import first_line

log = logging.getLogger(__name__)

BACKBONES: dict[str, dict[str, str]] = {
    "ViT-B-16+": {"open_clip_model": "ViT-B-16-plus-240", "default_pretrained": "laion400m_e31"},
}

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HF_HOST = "huggingface.co"


@dataclass
class LoadedBackbone:
    model: torch.nn.Module
    backbone: str  # what the user asked for (alias or open_clip name)
    open_clip_model: str
    weights: dict  # identity of the weights, recorded in the manifest


def register_model_configs(paths) -> None:
    """Add open_clip model config JSON files (custom architectures) to the registry."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"model config not found: {path}")
        open_clip.add_model_config(path)


def valid_backbones() -> list[str]:
    vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
    return [*BACKBONES, *vits]


def resolve_backbone(name: str) -> tuple[str, str | None]:
    """(open_clip model name, default pretrained tag) for an alias or open_clip name."""
    if name in BACKBONES:
        entry = BACKBONES[name]
        return entry["open_clip_model"], entry["default_pretrained"]
    if name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        return name, (tags[0] if tags else None)
    raise ExportError(f"unknown backbone {name!r}; valid: {', '.join(valid_backbones())}")


def _is_path_like(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES) or Path(value).exists()


def load_backbone(name: str, pretrained: str | None = None, seed: int = RANDOM_WEIGHTS_SEED) -> LoadedBackbone:
    """Build the model and load its weights (tag, checkpoint file or 'none': random, drawn from `seed`, so two
    exports of one configuration are the same bundle)."""
    model_name, default_tag = resolve_backbone(name)
    pretrained = pretrained if pretrained is not None else default_tag
    if pretrained is None:
        raise ExportError(f"{model_name} has no pretrained tag in open_clip; pass --pretrained PATH or none")
    torch.manual_seed(seed)  # the random initialisation: what 'none' keeps, what a checkpoint overwrites
    with quiet_random_init():
        model = open_clip.create_model(model_name, pretrained=None)
    if not isinstance(model.visual, VisionTransformer):
        raise ExportError(f"backbone {name!r} is not a ViT (its visual tower is {type(model.visual).__name__})")
    if pretrained == "none":
        log.warning("exporting %s with RANDOM weights (--pretrained none, seed %d): every command will say its "
                    "scores mean nothing; for trying the pipeline, tests and speed only", model_name, seed)
        weights = {"kind": "none", "seed": seed}
    elif _is_path_like(pretrained):
        path = Path(pretrained)
        _load_checkpoint_file(model, model_name, path)
        weights = {"kind": "file", "file": path.name, "sha256": sha256_file(path)}
    else:
        path = Path(_fetch_tag(model_name, pretrained))
        _load_checkpoint_file(model, model_name, path)
        weights = {"kind": "tag", "tag": pretrained, "sha256": sha256_file(path)}
    model.eval()
    return LoadedBackbone(model=model, backbone=name, open_clip_model=model_name, weights=weights)


@contextmanager
def quiet_random_init():
    """open_clip warns 'initialized randomly' for pretrained=None; the weights come next here."""
    drop = lambda record: "initialized randomly" not in record.getMessage()  # noqa: E731
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _load_checkpoint_file(model, model_name: str, path: Path) -> None:
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    if not os.access(path, os.R_OK):
        raise ExportError(f"checkpoint is not readable: {path}")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ExportError(f"unsupported checkpoint type {path.suffix!r}: use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        # weights_only=True: a checkpoint is data; pickled code is refused.
        state = open_clip.factory.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # corrupt zip/pickle/safetensors: one line, whatever the reader raised
        raise ExportError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    # Name a wrong architecture before open_clip's key massaging trips over it
    # (positional embeddings are exempt: open_clip resizes those on purpose).
    if _shape_mismatches(model, state):
        raise ExportError(describe_mismatch(model, model_name, path, state))
    del state
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, AssertionError, KeyError, ValueError) as exc:
        state = open_clip.factory.load_state_dict(str(path), weights_only=True)
        raise ExportError(describe_mismatch(model, model_name, path, state) + f" ({first_line(exc)})") from None


def _shape_mismatches(model, state) -> list[tuple[str, tuple, tuple]]:
    expected = model.state_dict()
    diffs = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape) and not k.endswith("positional_embedding")
    ]
    return sorted(diffs, key=lambda d: not d[0].startswith("visual."))  # the image tower first


def describe_mismatch(model, model_name: str, path: Path, state: dict) -> str:
    """Name how a checkpoint differs from the architecture it was given to."""
    expected = model.state_dict()
    shape_diffs = _shape_mismatches(model, state)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    parts = [f"checkpoint {path.name} does not fit {model_name}"]
    if shape_diffs:
        key, got, want = shape_diffs[0]
        parts.append(f"{key} is {got} in the checkpoint but {want} in the model")
        if len(shape_diffs) > 1:
            parts.append(f"{len(shape_diffs) - 1} more shape mismatches")
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if "visual.conv1.weight" in state:
        got_w = tuple(state["visual.conv1.weight"].shape)
        parts.append(f"checkpoint vision width/patch {got_w[0]}/{got_w[-1]}, model {model.visual.conv1.weight.shape[0]}/{model.visual.patch_size[0]}")
    return "; ".join(parts)


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    # DNS lookups have no timeout of their own: bound the whole probe.
    def probe() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(probe).result(timeout=timeout + 1)
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


def _fetch_tag(model_name: str, tag: str) -> str:
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise ExportError(f"unknown pretrained tag {tag!r} for {model_name}; known tags: {tags}")
    hub = cfg.get("hf_hub", "")
    repo, filename = os.path.split(hub) if hub else ("", "")
    filename = filename or "open_clip_pytorch_model.bin"
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for candidate in ("open_clip_model.safetensors", filename):
            cached = try_to_load_from_cache(repo, candidate)
            if isinstance(cached, str):
                return cached
    needed = f"{repo}/{filename}" if repo else cfg.get("url", "?")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or not _reachable(HF_HOST):
        raise ExportError(
            f"pretrained tag {tag!r} needs a download ({needed}) and {HF_HOST} is unreachable; "
            f"fetch that file on a connected machine and pass --pretrained PATH"
        )
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as exc:
        raise ExportError(f"download of {needed} failed: {first_line(exc)}; pass --pretrained PATH") from None
