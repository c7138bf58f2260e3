"""Detector: set up once from a bundle, then called per frame or per batch of frames."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np

from winclip.runtime.backends import (DEFAULT_BACKEND, Backend, BackendOptions, backend_for_address, open_backend,
                                      with_engine_options)
from winclip.runtime.bundle import Bundle
from winclip.runtime.cache import cache_path
from winclip.runtime.contract import Engine, normalize_object_name
from winclip.runtime.defaults import check_threshold
from winclip.runtime.errors import BundleError, WinclipError, first_line
from winclip.runtime.memory import FewShotMemory, MemoryKey
from winclip.runtime.postprocess import Region, find_regions, upsample_map
from winclip.runtime.preprocess import Preprocessor
from winclip.runtime.profiles.profile import LineProfile, ProfileError
from winclip.runtime.scoring import Scores, WinClipScorer


class FrameError(WinclipError, ValueError):
    """A frame that cannot be scored: unusable pixels, or a result that is not a finite number."""


@dataclass
class FrameResult:
    """What the detector says about one frame."""

    image_score: float  # anomaly score in [0, 1]
    anomaly_map: np.ndarray  # float32 (H, W) at the frame's resolution, values in [0, 1]
    anomalous: bool | None  # image_score >= threshold; None when no threshold is set
    timings_ms: dict[str, float] = field(default_factory=dict)  # this frame's share of each stage
    regions: list[Region] | None = None  # with a pixel threshold, for anomalous frames: largest first
    threshold: float | None = None  # the image threshold this frame was judged by
    pixel_threshold: float | None = None  # the pixel threshold its regions were found with (overlays colour by it)
    outputs: dict[str, np.ndarray] | None = None  # this frame's raw graph outputs, when the detector keeps them


class Detector:
    """WinCLIP (zero-shot) or WinCLIP+ (with a few-shot memory) anomaly detector.

    Set up once (bundle checks, session, self-check), then call it with a frame
    or a list of frames; a list is one session call.

    The self-check runs the engine once on a blank frame and refuses a bundle
    whose outputs do not have the manifest's shapes or are not finite. A passed
    check is remembered in the user's cache (keyed by engine, provider,
    manifest shapes, text and temperature), so later starts skip that frame.
    """

    def __init__(self, bundle: Bundle, object_name: str | None = None, options: BackendOptions = BackendOptions(),
                 *, backend: str = DEFAULT_BACKEND, temperature: float | None = None, threshold: float | None = None,
                 pixel_threshold: float | None = None, self_check: bool = True, **engine_options):
        """bundle: a loaded Bundle. object_name: whose text prototypes score (default: the bundle's only
        object). options: how to open the engine (device, precision, threads, cache, a served engine's
        endpoint, ...: see BackendOptions); backend: a name of winclip.runtime.backends.BACKENDS (a served
        endpoint's scheme names its own). threshold / pixel_threshold: image and pixel thresholds in [0, 1]
        (None: scores only, no verdict). temperature: overrides the manifest's. engine_options: fields of
        `options` by name, or by their older keywords (provider, engine, wait_for_engine), for callers that
        pass them one by one."""
        options = with_engine_options(options, **engine_options)
        self.bundle = bundle
        m = bundle.manifest
        if object_name is None:
            if len(bundle.objects) != 1:
                raise BundleError(f"the bundle holds several objects; choose one of: {', '.join(bundle.objects)}")
            object_name = bundle.objects[0]
        text = bundle.text_prototypes(object_name)
        self.object_name = normalize_object_name(object_name)
        if options.endpoint is not None:
            backend = backend_for_address(options.endpoint)
        self.backend: Backend = open_backend(bundle, backend, options)
        self.engine = self.backend.engine
        self.output_names = m.output_names
        self.preprocess = Preprocessor(m.preprocess)
        self.scorer = WinClipScorer(m.grid, m.scales, m.stride, text, m.temperature if temperature is None else temperature)
        self.threshold = check_threshold(threshold)
        self.pixel_threshold = check_threshold(pixel_threshold, "pixel threshold")
        self.memory_key = MemoryKey(graph_sha256=self.engine.sha256, precision=self.engine.precision,
                                    object_name=self.object_name, scales=tuple(m.scales), stride=m.stride,
                                    patch_layer=m.patch_layer, patch_ln_post=m.patch_ln_post)
        self.memory: FewShotMemory | None = None
        # hand each FrameResult its raw graph outputs (the live loop keeps recent ones to re-decide under a new memory)
        self.keep_outputs = False
        if self_check:
            marker = (cache_path(f"selfcheck-{self._self_check_key()}.ok", options.cache_dir) if options.cache
                      else None)
            if marker is None or not marker.is_file():
                self._self_check()
                if marker is not None:
                    try:
                        marker.touch()
                    except OSError:
                        pass  # the marker only saves the next start a frame

    def sharing_engine(self, object: str | None = None, profile: str | Path | LineProfile | None = None, *,
                       threshold: float | None = None, pixel_threshold: float | None = None) -> "Detector":
        """Another detector on this one's engine (one session in memory): its own object, line profile and
        thresholds. A profile made with another engine is refused (ProfileError), as from_bundle refuses it."""
        twin = copy.copy(self)
        if profile is not None:
            profile, name = _loaded_profile(profile, object)
            object = profile.object_name
            if profile.memory.key.graph_sha256 != self.engine.sha256:
                engine = _profile_engine(self.bundle, profile, name)
                raise ProfileError(f"the line profile {name} was made with the {engine.precision} engine "
                                   f"{engine.file}, not the {self.engine.precision} engine {self.engine.file} "
                                   "this run shares: give every camera a profile made with one engine")
            threshold = profile.image_threshold if threshold is None else threshold
            pixel_threshold = profile.pixel_threshold if pixel_threshold is None else pixel_threshold
        if object is None:
            object = self.object_name
        twin.object_name = normalize_object_name(object)
        twin.scorer = self.scorer.with_text(self.bundle.text_prototypes(object))
        twin.memory_key = replace(self.memory_key, object_name=twin.object_name)
        twin.threshold = check_threshold(threshold)
        twin.pixel_threshold = check_threshold(pixel_threshold, "pixel threshold")
        twin.memory = None
        if profile is not None:
            _use_profile_memory(twin, profile, name)
        return twin

    @classmethod
    def from_bundle(cls, path: str | Path | Bundle, object: str | None = None,
                    profile: str | Path | LineProfile | None = None, options: BackendOptions = BackendOptions(),
                    **kwargs) -> "Detector":
        """Load and check the bundle at `path` (or take one already loaded), then set up as __init__ says.

        profile: a line profile (its directory, or a loaded LineProfile): its memory,
        object and engine are used (on whichever backend runs that engine), and its
        image and pixel thresholds unless `threshold` / `pixel_threshold` are given.
        A profile made with another engine graph or object is refused.
        """
        own = {k: kwargs.pop(k) for k in ("backend", "temperature", "threshold", "pixel_threshold", "self_check")
               if k in kwargs}
        options = with_engine_options(options, **kwargs)
        # a loaded Bundle is taken as it is: a caller that sets up many detectors (winclip-eval) loads it once
        loaded = lambda: path if isinstance(path, Bundle) else Bundle.load(path)  # noqa: E731
        if profile is None:
            return cls(loaded(), object_name=object, options=options, **own)
        profile, name = _loaded_profile(profile, object)
        bundle = loaded()  # after the profile's own checks: their one-line reasons come first
        engine = _profile_engine(bundle, profile, name)
        if options.precision not in ("auto", engine.precision):
            raise ProfileError(f"the line profile {name} was made with the {engine.precision} engine "
                               f"{engine.file}, and runs only with it: drop --precision {options.precision}")
        # the very engine it was made with, whatever the backend
        options = replace(options, precision=engine.precision, engine_sha256=options.engine_sha256 or engine.sha256)
        if own.get("threshold") is None:
            own["threshold"] = profile.image_threshold
        if own.get("pixel_threshold") is None:
            own["pixel_threshold"] = profile.pixel_threshold
        detector = cls(bundle, object_name=profile.object_name, options=options, **own)
        _use_profile_memory(detector, profile, name)
        return detector

    @property
    def providers(self) -> list[str]:
        """The onnxruntime providers the engine runs on ([device] for other backends)."""
        return getattr(self.backend, "providers", [self.backend.device])

    def describe(self) -> str:
        """One line for people: what runs where."""
        return f"object {self.object_name!r}, {self.backend.describe()}"

    def _self_check_key(self) -> str:
        """What a passed self-check vouches for: this engine on this backend with this manifest, text and tau."""
        digest = hashlib.sha256()
        for part in (self.engine.sha256, self.backend.name, self.backend.version(), repr(self.scorer.temperature),
                     json.dumps(self.bundle.manifest.output_shapes(), sort_keys=True)):
            digest.update(part.encode() + b"\0")
        digest.update(self.scorer.text.tobytes())
        return digest.hexdigest()

    def _self_check(self) -> None:
        """Run the graph once on a blank frame: every output must have the manifest's shape and be finite."""
        h, w = self.bundle.manifest.preprocess.input_size
        try:
            outputs, _ = self.embed([np.full((h, w, 3), 128, np.uint8)])
        except Exception as exc:
            raise BundleError(f"the bundle's self-check failed: {self.backend.name}: {first_line(exc)}") from None
        self.backend.check_outputs(outputs, self.bundle.manifest, 1)
        scores = self.scorer(outputs)
        if not (np.isfinite(scores.image_score).all() and np.isfinite(scores.grid_map).all()):
            raise BundleError("the bundle's self-check failed: scores of a blank frame are not finite "
                              "(check the text embeddings and the temperature)")

    def embed(self, frames, color_order: str = "bgr") -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """One session call for the whole batch: the graph's raw outputs by name and stage times (s)."""
        t0 = time.perf_counter()
        batch = self.preprocess(frames, color_order)
        t1 = time.perf_counter()
        outputs = self.backend.run(batch)
        t2 = time.perf_counter()
        return outputs, {"preprocess": t1 - t0, "engine": t2 - t1}

    def build_memory(self, normal_frames, color_order: str = "bgr", batch_size: int = 1) -> FewShotMemory:
        """Build and use the WinCLIP+ memory from K >= 1 normal frames (any iterable of them).

        The frames go through the engine `batch_size` at a time and each batch is
        reduced to the memory's unit vectors before the next one runs: the engine's
        working memory stays that of one batch whatever K is (one frame by default;
        on a CPU a larger batch is no faster per frame).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        frames = iter(normal_frames)
        batches = (self.embed(batch, color_order)[0] for batch in iter(lambda: list(islice(frames, batch_size)), []))
        self.set_memory(FewShotMemory.from_batches(batches, self.memory_key))
        return self.memory

    def set_memory(self, memory: FewShotMemory | None) -> None:
        """Use a memory (None: zero-shot); refused unless it was made for this engine and object."""
        if memory is not None:
            problem = memory.key.mismatch(self.memory_key)
            if problem:
                raise BundleError(f"the few-shot memory does not fit this detector: {problem}")
        self.memory = memory

    def to_profile(self, record: dict | None = None) -> LineProfile:
        """The current memory and thresholds as a line profile (write it with .save(path))."""
        if self.memory is None:
            raise ValueError("a line profile needs a few-shot memory: call build_memory first")
        identity = {"graph_sha256": self.engine.sha256, "precision": self.engine.precision,
                    "engine_file": self.engine.file, "object": self.object_name}
        return LineProfile(self.memory, self.threshold, self.pixel_threshold, {"bundle": identity, **(record or {})})

    def score(self, frames, color_order: str = "bgr") -> tuple[Scores, dict[str, float]]:
        """Image scores and grid maps for a batch (one session call), and stage times (s)."""
        scores, times, _ = self._score(frames, color_order)
        return scores, times

    def _score(self, frames, color_order: str) -> tuple[Scores, dict[str, float], dict[str, np.ndarray]]:
        outputs, times = self.embed(frames, color_order)
        t0 = time.perf_counter()
        scores = self.scorer(outputs, self.memory)
        times["scoring"] = time.perf_counter() - t0
        return scores, times, outputs

    def __call__(self, frames, color_order: str = "bgr") -> list[FrameResult]:
        """Score a frame (H, W[, C] array) or a list of frames; one FrameResult per frame.

        Frames may be any size, gray/BGR/RGB/BGRA, 8- or 16-bit or float in [0, 1].
        Raises FrameError if any frame is unusable or scores to a non-finite value.
        """
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
            frames = [frames]
        frames = list(frames)
        if not frames:
            return []
        try:
            outputs, times = self.embed(frames, color_order)
        except ValueError as exc:
            raise FrameError(str(exc)) from None
        return self.judge(frames, outputs, times)

    def judge(self, frames: list, outputs: dict[str, np.ndarray], times: dict[str, float]) -> list[FrameResult]:
        """Score and decide frames whose graph outputs are known (from this detector's engine, or one it shares:
        see `sharing_engine`): this detector's text, memory and thresholds. `times` (s) are the batch's stages
        so far; each result gets its share of them and of the scoring."""
        times = dict(times)
        t0 = time.perf_counter()
        try:
            scores = self.scorer(outputs, self.memory)
        except ValueError as exc:
            raise FrameError(str(exc)) from None
        times["scoring"] = time.perf_counter() - t0
        for i in range(len(frames)):
            if not (math.isfinite(scores.image_score[i]) and np.isfinite(scores.grid_map[i]).all()):
                raise FrameError("the engine gave a score that is not a finite number")
        t0 = time.perf_counter()
        maps = [upsample_map(scores.grid_map[i], *np.shape(f)[:2]) for i, f in enumerate(frames)]
        times["upsample"] = time.perf_counter() - t0
        share = {k: 1000.0 * v / len(frames) for k, v in times.items()}
        results = []
        for i, amap in enumerate(maps):
            score = float(scores.image_score[i])
            decision = None if self.threshold is None else bool(score >= self.threshold)
            regions = None
            if self.pixel_threshold is not None and decision is not False:
                regions = find_regions(amap, self.pixel_threshold)
            kept = {k: v[i] for k, v in outputs.items()} if self.keep_outputs else None
            results.append(FrameResult(score, amap, decision, dict(share), regions, self.threshold, self.pixel_threshold,
                                       kept))
        return results


def _loaded_profile(profile: str | Path | LineProfile, object: str | None) -> tuple[LineProfile, str]:
    """The profile (loaded from its directory when given one) and its name for messages; ProfileError when it
    is for another object than `object` asks."""
    name = str(profile) if isinstance(profile, (str, Path)) else "the line profile"
    if not isinstance(profile, LineProfile):
        profile = LineProfile.load(profile)
    if object is not None and normalize_object_name(object) != profile.object_name:
        raise ProfileError(f"the line profile {name} is for object {profile.object_name!r}, not {object!r}")
    return profile, name


def _use_profile_memory(detector: "Detector", profile: LineProfile, name: str) -> None:
    try:
        detector.set_memory(profile.memory)
    except BundleError as exc:
        raise ProfileError(str(exc).replace("few-shot memory", f"line profile {name}")) from None


def _profile_engine(bundle: Bundle, profile: LineProfile, name) -> Engine:
    """The engine of `bundle` the profile was made with; ProfileError naming the engine and the fix otherwise."""
    wanted = profile.memory.key.graph_sha256
    for engine in bundle.manifest.engines:
        if engine.sha256 == wanted:
            return engine
    made = profile.record.get("bundle") if isinstance(profile.record.get("bundle"), dict) else {}
    file = made.get("engine_file") or "an engine"
    raise ProfileError(f"the line profile {name} was made with the {profile.precision} engine {str(file)[:80]} "
                       f"(sha256 {wanted[:12]}...), which this bundle does not have: re-run winclip-calibrate "
                       "with this bundle to make a profile for it")
