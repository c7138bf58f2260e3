"""The open_clip visual encoder re-expressed for ONNX with batched window masks.

One forward call embeds the patches once, adds the positional embedding to every
token (positions before selection), then runs the whole image and every k x k
window of every frame through the same transformer: windows are gathered with a
constant token-index table and each scale's windows go as one batch. Scales run
as separate batches because their sequence lengths differ (5 and 10 tokens at
k=2 and 3); padding them into one batch would cost a third more token passes.
"""

from __future__ import annotations

import torch
from torch import nn

from winclip.runtime.geometry import window_token_table


class WindowedVisual(nn.Module):
    def __init__(self, visual: nn.Module, scales=(2, 3), stride: int = 1,
                 patch_layer: int | None = None, patch_ln_post: bool = False):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("only class-token pooled open_clip ViTs are supported")
        self.visual = visual
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.scales = tuple(int(k) for k in scales)
        self.stride = int(stride)
        blocks = len(visual.transformer.resblocks)
        self.patch_layer = blocks if patch_layer is None else int(patch_layer)
        if not 1 <= self.patch_layer <= blocks:
            raise ValueError(f"patch layer must be in 1..{blocks}, got {self.patch_layer}")
        self.patch_ln_post = bool(patch_ln_post)
        # python ints, read once: inside forward they would be traced tensors
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1])
        self.window_shapes = {}
        for k in self.scales:
            table = torch.from_numpy(window_token_table(self.grid, k, self.stride))
            self.register_buffer(f"window_tokens_{k}", table, persistent=False)
            self.window_shapes[k] = tuple(table.shape)  # python ints: static dims in the graph


    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[class, patches] + positional embedding, (B, 1 + P, width)."""
        v = self.visual
        x = v.conv1(images)
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)

    def _blocks(self, x: torch.Tensor, keep_layer: int | None = None):
        """Run ln_pre and the blocks on (N, L, width); optionally keep one block's output."""
        t = self.visual.transformer
        x = self.visual.ln_pre(x)
        # open_clip >= 2.26 is batch-first; an old sequence-first build would
        # otherwise mix attention across windows without any shape error.
        seq_first = not getattr(t, "batch_first", True)
        if seq_first:
            x = x.transpose(0, 1)
        kept = None
        for i, block in enumerate(t.resblocks, start=1):
            x = block(x)
            if i == keep_layer:
                kept = x.transpose(0, 1) if seq_first else x
        if seq_first:
            x = x.transpose(0, 1)
        return x, kept

    def _project_class(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj

    def forward(self, images: torch.Tensor):
        tokens = self.embed_tokens(images)
        width, dim = self.width, self.embed_dim
        full, kept = self._blocks(tokens, keep_layer=self.patch_layer)
        image_embedding = self._project_class(full)
        patch_features = kept[:, 1:]
        if self.patch_ln_post:
            patch_features = self.visual.ln_post(patch_features)
        windows = []
        for k in self.scales:
            n_windows, length = self.window_shapes[k]
            table = getattr(self, f"window_tokens_{k}").reshape(-1)
            seq = tokens[:, table].reshape(-1, length, width)  # all windows of all frames: one batch
            out, _ = self._blocks(seq)
            windows.append(self._project_class(out).reshape(-1, n_windows, dim))
        return (image_embedding, *windows, patch_features)
