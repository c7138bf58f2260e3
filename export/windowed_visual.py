"""The open_clip visual encoder re-expressed for ONNX with batched window masks.

One forward call embeds the patches once, adds the positional embedding to every
token (positions before selection), then runs the whole image and every k x k
window of every frame through the same transformer weights: windows are
gathered with a constant token-index table and each scale's windows go as one
batch (their sequence lengths differ: 5 and 10 tokens at k=2 and 3; padding
them into one batch would cost a third more token passes).

Work that gives the same result in every window is done once (exact, held to
open_clip's own forward by the export's verification and the tests):

- token-wise work before the first attention (patch embedding, positions,
  ln_pre, the first block's ln_1 and QKV projection) is computed once per token
  in the whole-image pass and gathered into the windows;
- the windows' last block computes keys and values for all tokens but the
  attention output, MLP and LayerNorms for the class token only, the one token
  whose output is read.

Blocks that are not open_clip's standard ResidualAttentionBlock run as they are,
without these savings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from winclip.runtime.defaults import WINDOW_SCALES, WINDOW_STRIDE
from winclip.runtime.geometry import window_token_table


def _standard(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    return (type(block).__name__ == "ResidualAttentionBlock" and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
            and not hasattr(block, "ln_1_kv"))


class ExplicitBlock(nn.Module):
    """An open_clip ResidualAttentionBlock written out, so that parts of it can be shared or skipped.

    Sequence lengths are python ints, so every reshape in the graph is constant
    but for the batch axis (what ONNX Runtime's quantization tools need to infer
    shapes). Calls go through this module, so graph nodes are named per block.
    """

    def __init__(self, block: nn.Module, width: int):
        super().__init__()
        self.block = block
        self.width = width
        self.heads = int(block.attn.num_heads)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.block.ln_1(x), self.block.attn.in_proj_weight, self.block.attn.in_proj_bias)

    def _attend(self, q, k, v, lq: int, lk: int) -> torch.Tensor:
        """Multi-head attention of q (N, lq, w) over k, v (N, lk, w), then the output projection."""
        d = self.width // self.heads
        q = q.reshape(-1, lq, self.heads, d).transpose(1, 2) * (d ** -0.5)
        k = k.reshape(-1, lk, self.heads, d).transpose(1, 2)
        v = v.reshape(-1, lk, self.heads, d).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self.block.attn.out_proj(a.transpose(1, 2).reshape(-1, lq, self.width))

    def _finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual, MLP and residual: the part of a block after attention."""
        b = self.block
        x = x + b.ls_1(attn_out)
        return x + b.ls_2(b.mlp(b.ln_2(x)))

    def forward(self, x: torch.Tensor, length: int, qkv: torch.Tensor | None = None,
                class_only: bool = False) -> torch.Tensor:
        """The block on (N, length, w); `qkv` precomputed or None; class_only: output (N, 1, w) for token 0."""
        w = self.width
        if qkv is None and class_only:  # the query of token 0 only; keys and values of all
            h = self.block.ln_1(x)
            weight, bias = self.block.attn.in_proj_weight, self.block.attn.in_proj_bias
            q = F.linear(h[:, :1], weight[:w], bias[:w])
            k, v = F.linear(h, weight[w:], bias[w:]).split(w, dim=-1)
        else:
            q, k, v = (self.qkv(x) if qkv is None else qkv).split(w, dim=-1)
            if class_only:
                q = q[:, :1]
        if class_only:
            return self._finish(x[:, :1], self._attend(q, k, v, 1, length))
        return self._finish(x, self._attend(q, k, v, length, length))


class WindowedVisual(nn.Module):
    def __init__(self, visual: nn.Module, scales=WINDOW_SCALES, stride: int = WINDOW_STRIDE,
                 patch_layer: int | None = None, patch_ln_post: bool = False, eliminate: bool = True):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("only class-token pooled open_clip ViTs are supported")
        if not getattr(visual.transformer, "batch_first", True):
            # open_clip < 2.26 is sequence-first; this wrapper feeds (N, L, D)
            raise ValueError("this open_clip runs its transformer sequence-first; use open_clip >= 2.26")
        self.visual = visual
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.scales = tuple(int(k) for k in scales)
        self.stride = int(stride)
        self.blocks = visual.transformer.resblocks
        self.n_layers = len(self.blocks)
        self.patch_layer = self.n_layers if patch_layer is None else int(patch_layer)
        if not 1 <= self.patch_layer <= self.n_layers:
            raise ValueError(f"patch layer must be in 1..{self.n_layers}, got {self.patch_layer}")
        self.patch_ln_post = bool(patch_ln_post)
        self.eliminate = bool(eliminate) and all(_standard(b) for b in self.blocks)
        if self.eliminate:
            self.explicit = nn.ModuleList(ExplicitBlock(b, int(visual.conv1.out_channels)) for b in self.blocks)
        # python ints, read once: inside forward they would be traced tensors
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1])
        self.mlp_width = int(self.blocks[0].mlp.c_fc.out_features) if hasattr(self.blocks[0], "mlp") else 4 * self.width
        self.n_tokens = 1 + self.grid[0] * self.grid[1]
        self.window_shapes = {}
        for k in self.scales:
            table = torch.from_numpy(window_token_table(self.grid, k, self.stride))
            self.register_buffer(f"window_tokens_{k}", table, persistent=False)
            self.window_shapes[k] = tuple(int(s) for s in table.shape)  # static dims in the graph

    def _project_class(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[class, patches] + positional embedding, (B, 1 + P, width)."""
        v = self.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)

    def _run(self, i: int, x: torch.Tensor, length: int, qkv=None, class_only: bool = False) -> torch.Tensor:
        if not self.eliminate:
            return self.blocks[i](x)
        return self.explicit[i](x, length, qkv, class_only)

    def forward(self, images: torch.Tensor):
        x0 = self.visual.ln_pre(self.embed_tokens(images))  # (B, 1 + P, w), token-wise
        qkv0 = self.explicit[0].qkv(x0) if self.eliminate else None  # shared with every window
        # whole image: every block on every token; the patch layer's output kept
        x, kept = x0, None
        for i in range(self.n_layers):
            x = self._run(i, x, self.n_tokens, qkv0 if i == 0 else None)
            if i + 1 == self.patch_layer:
                kept = x
        image_embedding = self._project_class(x)
        patch_features = kept[:, 1:]
        if self.patch_ln_post:
            patch_features = self.visual.ln_post(patch_features)
        windows = []
        for k in self.scales:
            n_windows, length = self.window_shapes[k]
            table = getattr(self, f"window_tokens_{k}")
            xw = x0[:, table].reshape(-1, length, self.width)  # all windows of all frames: one batch
            qkv = qkv0[:, table].reshape(-1, length, 3 * self.width) if self.eliminate else None
            for i in range(self.n_layers):
                last = i + 1 == self.n_layers and self.eliminate
                xw = self._run(i, xw, length, qkv if i == 0 else None, class_only=last)
            windows.append(self._project_class(xw).reshape(-1, n_windows, self.embed_dim))
        return (image_embedding, *windows, patch_features)
