"""A plain torch WinCLIP / WinCLIP+ pipeline, written straight from the algorithm text.

It is the yardstick the runtime is held to (tests and benchmarks), so it shares
nothing with the runtime but the model and the prompt lists: it enumerates its
own windows with loops, runs open_clip's own visual forward for the image
embedding, hooks the block output for patch features, resizes with torch and
aggregates window scores patch by patch. Clarity over speed.
"""

from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from winclip.runtime.defaults import TEMPERATURE, WINDOW_SCALES, WINDOW_STRIDE


def windows_by_loops(grid: tuple[int, int], k: int, stride: int = 1) -> list[list[int]]:
    """Every k x k window at the stride, row-major; each a row-major list of patch indices."""
    rows, cols = grid
    return [
        [(r + i) * cols + (c + j) for i in range(k) for j in range(k)]
        for r in range(0, rows - k + 1, stride)
        for c in range(0, cols - k + 1, stride)
    ]


def read_rgb(path) -> np.ndarray:
    """An image file as RGB float64 in [0, 1], decoded with PIL (not the runtime's OpenCV path)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            gray = np.asarray(img, dtype=np.float64) / 65535.0
            return np.repeat(gray[:, :, None], 3, axis=2)
        if img.mode == "L":
            return np.repeat((np.asarray(img, dtype=np.float64) / 255.0)[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


class TorchWinClip:
    """WinCLIP / WinCLIP+ in plain torch: features(), set_normal_images(), and a call per batch."""

    def __init__(self, model, text_prototypes: np.ndarray, scales=WINDOW_SCALES, temperature: float = TEMPERATURE,
                 patch_layer: int | None = None, stride: int = WINDOW_STRIDE, patch_ln_post: bool = False):
        self.model = model.eval()
        self.visual = model.visual
        self.grid = tuple(int(g) for g in self.visual.grid_size)
        self.size = tuple(int(s) for s in self.visual.image_size)
        pre = open_clip.get_model_preprocess_cfg(model)
        self.mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.text = F.normalize(torch.as_tensor(text_prototypes, dtype=torch.float64), dim=-1)
        self.scales = tuple(scales)
        self.temperature = temperature
        self.patch_layer = patch_layer or len(self.visual.transformer.resblocks)
        self.patch_ln_post = patch_ln_post
        self.windows = {k: windows_by_loops(self.grid, k, stride) for k in self.scales}
        self.memory = None

    # ---- image side
    def preprocess(self, rgb_frames: list[np.ndarray]) -> torch.Tensor:
        """RGB float frames in [0, 1] of any size -> normalised (B, 3, H, W)."""
        out = []
        for frame in rgb_frames:
            x = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float64)).permute(2, 0, 1)[None]
            # float64: torch's float32 kernel rounds its tap positions (~2e-5 off)
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False).float()
            out.append((x - self.mean) / self.std)
        return torch.cat(out)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict:
        v = self.visual
        captured = {}
        hook = v.transformer.resblocks[self.patch_layer - 1].register_forward_hook(
            lambda mod, inp, out: captured.__setitem__("tokens", out))
        try:
            image_embedding = v(images)  # open_clip's own forward: class token -> ln_post -> proj
        finally:
            hook.remove()
        patch_features = captured["tokens"][:, 1:]
        if self.patch_ln_post:
            patch_features = v.ln_post(patch_features)
        # embedded tokens with positions, before ln_pre (what a window selects from)
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
        tokens = torch.cat([cls, x], dim=1) + v.positional_embedding
        windows = {}
        for k, wins in self.windows.items():
            per_frame = []
            for b in range(tokens.shape[0]):
                seqs = torch.stack([torch.cat([tokens[b, :1], tokens[b, [p + 1 for p in w]]]) for w in wins])
                out = v.transformer(v.ln_pre(seqs))  # (N, L, D): open_clip 3.x is batch-first
                per_frame.append(v.ln_post(out[:, 0]) @ v.proj)
            windows[k] = torch.stack(per_frame)
        return {"image": image_embedding, "windows": windows, "patches": patch_features}

    # ---- scores
    def prob(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb.double(), dim=-1) @ self.text.T
        return torch.softmax(cos / self.temperature, dim=-1)[..., 1]

    def to_patches(self, window_values: torch.Tensor, k: int) -> torch.Tensor:
        """Harmonic mean, per patch, of the values of the windows covering it."""
        n_patches = self.grid[0] * self.grid[1]
        out = torch.empty(window_values.shape[0], n_patches, dtype=torch.float64)
        for p in range(n_patches):
            covering = [u for u, w in enumerate(self.windows[k]) if p in w]
            # a zero value makes the harmonic mean 0: floor it as the runtime does
            out[:, p] = len(covering) / (1.0 / window_values[:, covering].clamp_min(1e-12)).sum(dim=1)
        return out

    @staticmethod
    def assoc(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(queries.double(), dim=-1) @ F.normalize(memory.double(), dim=-1).T
        return (1.0 - cos.max(dim=-1).values.clamp(max=1.0)) / 2.0

    @torch.no_grad()
    def set_normal_images(self, rgb_frames: list[np.ndarray]) -> None:
        """WinCLIP+: pool the window and patch features of K normal frames as the memory."""
        f = self.features(self.preprocess(rgb_frames))
        self.memory = {
            "windows": {k: w.reshape(-1, w.shape[-1]) for k, w in f["windows"].items()},
            "patches": f["patches"].reshape(-1, f["patches"].shape[-1]),
        }

    @torch.no_grad()
    def __call__(self, rgb_frames: list[np.ndarray]):
        """Per frame: (image score, anomaly map at the frame's resolution)."""
        f = self.features(self.preprocess(rgb_frames))
        s_img = self.prob(f["image"])
        inv = 1.0 / s_img[:, None]
        for k in self.scales:
            inv = inv + 1.0 / self.to_patches(self.prob(f["windows"][k]), k)
        zero_map = (1 + len(self.scales)) / inv
        score, grid_map = s_img, zero_map
        if self.memory is not None:
            parts = [self.assoc(f["patches"], self.memory["patches"])]
            for k in self.scales:
                parts.append(self.to_patches(self.assoc(f["windows"][k], self.memory["windows"][k]), k))
            few_map = torch.stack(parts).mean(dim=0)
            grid_map = (zero_map + few_map) / 2.0
            score = (s_img + few_map.max(dim=1).values) / 2.0
        results = []
        for i, frame in enumerate(rgb_frames):
            m = grid_map[i].float().view(1, 1, *self.grid)
            up = F.interpolate(m, size=frame.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            results.append((float(score[i]), up.numpy()))
        return results
