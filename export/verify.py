"""Check a written ONNX graph against the torch module it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from winclip.export.errors import ExportError
from winclip.runtime.errors import first_line


def verification_inputs(size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Two batches of different sizes: smooth image-like frames, and noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = []
    for i in range(2):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([0.5 + 0.4 * np.sin(6 * xx + 4 * yy * (c + 1) + phase[c] + i) for c in range(3)])
        img += 0.05 * rng.standard_normal(img.shape)
        frames.append(img)
    # normalised with CLIP-like statistics, so values span the usual range
    smooth = ((np.stack(frames) - 0.45) / 0.27).astype(np.float32)
    noise = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    return [smooth, noise]


def verify_graph(module: torch.nn.Module, graph: Path, tolerance: float) -> dict:
    """Run the graph in onnxruntime (CPU) and compare every output to torch.

    The tolerance is absolute for outputs within [-1, 1] and relative to the
    output's largest magnitude beyond that: last-block patch tokens of trained
    CLIPs reach the hundreds, where fp32 kernels legitimately differ by more
    than 1e-4 absolute. The image embedding is also held to open_clip's own
    visual forward, so the re-expressed graph cannot drift from the model.
    """
    try:
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX verification failed: onnxruntime cannot load the graph: {first_line(exc)}") from None
    names = [o.name for o in session.get_outputs()]
    size = tuple(int(s) for s in module.visual.image_size)
    worst: dict[str, float] = {}
    scale: dict[str, float] = {}
    for batch in verification_inputs(size):
        with torch.no_grad():
            x = torch.from_numpy(batch)
            expected = [t.numpy() for t in module(x)]
            own = module.visual(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: batch})
        for name, e, g in [*zip(names, expected, got), ("open_clip image embedding", own, got[0])]:
            if e.shape != g.shape:
                raise ExportError(f"ONNX verification failed: {name} has shape {g.shape}, torch gives {e.shape}")
            worst[name] = max(worst.get(name, 0.0), float(np.max(np.abs(e - g))))
            scale[name] = max(scale.get(name, 1.0), float(np.max(np.abs(e))))
    bad = {n: d for n, d in worst.items() if not d <= tolerance * scale[n]}
    if bad:
        name, diff = max(bad.items(), key=lambda kv: kv[1] / scale[kv[0]])
        raise ExportError(f"ONNX verification failed: {name} differs from torch by {diff:.2e} "
                          f"(tolerance {tolerance:.0e} x {scale[name]:.3g})")
    return {"provider": "CPUExecutionProvider", "inputs": 2, "tolerance": tolerance,
            "max_abs_diff": worst, "max_abs_value": scale}
