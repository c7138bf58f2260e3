"""Detector: set up once from a bundle, then called per frame or per batch of frames."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from winclip.runtime.bundle import IMAGE_EMBEDDING, Bundle, BundleError
from winclip.runtime.preprocess import Preprocessor, upsample_map
from winclip.runtime.scoring import ReferenceMemory, WinClipScorer
from winclip.runtime.session import create_session

@dataclass
class FrameResult:
    image_score: float
    anomaly_map: np.ndarray  # float32 (H, W) at the frame's resolution
    anomalous: bool | None  # None when no threshold is set
    timings_ms: dict[str, float] = field(default_factory=dict)  # this frame's share of each stage
    grid_map: np.ndarray | None = None  # the map at patch-grid resolution


class Detector:
    """WinCLIP (zero-shot) or WinCLIP+ (after set_reference) anomaly detector."""

    def __init__(self, bundle: Bundle, object_name: str | None = None, provider: str = "auto",
                 threads: int | None = None, temperature: float | None = None,
                 threshold: float | None = None, cache: bool = True, cache_dir: Path | None = None):
        self.bundle = bundle
        objects = bundle.objects
        if object_name is None:
            if len(objects) != 1:
                raise BundleError(f"the bundle holds several objects; choose one of: {', '.join(objects)}")
            object_name = objects[0]
        text = bundle.text_prototypes(object_name)
        self.object_name = object_name
        declared = bundle.manifest["graph"]["outputs"].get(IMAGE_EMBEDDING)  # absent: refused below
        if declared and text.shape[1] != declared[-1]:
            raise BundleError(f"text embeddings of {object_name!r} have width {text.shape[1]}, the graph {declared[-1]}")
        self.session = create_session(bundle, provider=provider, threads=threads, cache=cache, cache_dir=cache_dir)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.preprocess = Preprocessor(bundle.preprocess)
        tau = bundle.scoring["temperature"] if temperature is None else temperature
        self.scorer = WinClipScorer(bundle.grid, bundle.scales, bundle.stride, text, tau)
        self.threshold = threshold
        self.memory: ReferenceMemory | None = None

    @classmethod
    def from_bundle(cls, path: str | Path, object: str | None = None, provider: str = "auto", **kwargs) -> "Detector":
        return cls(Bundle.load(path), object_name=object, provider=provider, **kwargs)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def embed(self, frames, color_order: str = "bgr") -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """One session call for the whole batch; returns the raw outputs and stage times (s)."""
        t0 = time.perf_counter()
        batch = self.preprocess(frames, color_order)
        t1 = time.perf_counter()
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: batch})))
        t2 = time.perf_counter()
        return outputs, {"preprocess": t1 - t0, "engine": t2 - t1}

    def set_reference(self, images, color_order: str = "bgr", batch_size: int = 4) -> ReferenceMemory:
        """Build the WinCLIP+ memory from K normal images (K >= 1)."""
        images = list(images)
        if not images:
            raise ValueError("set_reference needs at least one normal image")
        chunks = [self.embed(images[i:i + batch_size], color_order)[0] for i in range(0, len(images), batch_size)]
        merged = {name: np.concatenate([c[name] for c in chunks]) for name in self.output_names}
        self.memory = self.scorer.memory_from_outputs(merged)
        return self.memory

    def clear_reference(self) -> None:
        self.memory = None

    def __call__(self, frames, color_order: str = "bgr") -> list[FrameResult]:
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
            frames = [frames]
        frames = list(frames)
        if not frames:
            return []
        outputs, times = self.embed(frames, color_order)
        t0 = time.perf_counter()
        scores = self.scorer(outputs, self.memory)
        t1 = time.perf_counter()
        maps = [upsample_map(scores.grid_map[i], *np.shape(f)[:2]) for i, f in enumerate(frames)]
        times.update(scoring=t1 - t0, upsample=time.perf_counter() - t1)
        share = {k: 1000.0 * v / len(frames) for k, v in times.items()}
        results = []
        for i, amap in enumerate(maps):
            score = float(scores.image_score[i])
            decision = None if self.threshold is None else bool(score >= self.threshold)
            results.append(FrameResult(score, amap, decision, dict(share), scores.grid_map[i].astype(np.float32)))
        return results
