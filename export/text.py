"""Prompt-ensemble text prototypes, computed once at export."""

from __future__ import annotations

import numpy as np
import open_clip
import torch

from winclip.runtime.defaults import TEXT_ENSEMBLE, TEXT_ENSEMBLES
from winclip.export.prompts import prompt_sets


@torch.no_grad()
def encode_prompts(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    return model.encode_text(tokenizer(prompts)).float()


@torch.no_grad()
def text_prototypes(model, model_name: str, object_name: str, ensemble: str = TEXT_ENSEMBLE) -> np.ndarray:
    """(2, D) float32, row 0 normal and row 1 anomalous, each L2-normalised.

    normalized_mean: normalise each prompt embedding, average, normalise (CLIP's
    ensembling). raw_mean: average the raw embeddings, then normalise (anomalib).
    """
    if ensemble not in TEXT_ENSEMBLES:
        raise ValueError(f"unknown text ensemble {ensemble!r}; use one of {TEXT_ENSEMBLES}")
    tokenizer = open_clip.get_tokenizer(model_name)
    rows = []
    for prompts in prompt_sets(object_name):
        emb = encode_prompts(model, tokenizer, prompts)
        if ensemble == "normalized_mean":
            emb = emb / emb.norm(dim=-1, keepdim=True)
        proto = emb.mean(dim=0)
        rows.append(proto / proto.norm())
    return torch.stack(rows).numpy().astype(np.float32)
