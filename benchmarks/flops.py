"""Floating-point operations per frame of a bundle's graph, counted from its manifest.

Counts multiply-adds as 2 FLOPs in every matrix product (patch embedding,
QKV, attention scores and mixing, output projection, MLP, class projection);
LayerNorm, softmax, GELU and gathers are left out (well under 1%). With the
graph's work elimination (see export/windowed_visual.py) the windows reuse the
first block's QKV of the whole-image pass and run their last block for the
class token alone.
"""

from __future__ import annotations

from winclip.runtime.contract import Manifest


def block_flops(tokens: int, width: int, mlp: int) -> int:
    """One standard transformer block on a sequence of `tokens`."""
    qkv = 2 * tokens * width * 3 * width
    attention = 2 * 2 * tokens * tokens * width
    out = 2 * tokens * width * width
    feed_forward = 2 * 2 * tokens * width * mlp
    return qkv + attention + out + feed_forward


def frame_flops(m: Manifest, work_elimination: bool | None = None) -> dict[str, int]:
    """FLOPs of one frame by part: 'image' (whole-image pass), 'windows_<k>', and 'total'."""
    eliminate = m.work_elimination if work_elimination is None else work_elimination
    w, mlp, layers = m.width, m.mlp_width, m.layers
    patches = m.n_patches
    ph, pw = m.patch_size
    tokens = 1 + patches
    parts = {"image": 2 * patches * 3 * ph * pw * w + layers * block_flops(tokens, w, mlp) + 2 * w * m.embed_dim}
    for k, n in m.window_counts.items():
        length = 1 + k * k
        if eliminate:
            first = block_flops(length, w, mlp) - 2 * length * w * 3 * w  # QKV comes from the whole-image pass
            last = (2 * length * w * 2 * w  # keys and values of every token
                    + 2 * w * w  # the class token's query
                    + 2 * 2 * length * w  # its attention
                    + 2 * w * w + 2 * 2 * w * mlp)  # its output projection and MLP
            if layers == 1:  # the one block is both: shared QKV, class token only
                per_window = 2 * 2 * length * w + 2 * w * w + 2 * 2 * w * mlp
            else:
                per_window = first + (layers - 2) * block_flops(length, w, mlp) + last
        else:
            per_window = layers * block_flops(length, w, mlp)
        parts[f"windows_{k}"] = n * (per_window + 2 * w * m.embed_dim)
    parts["total"] = sum(parts.values())
    return parts
