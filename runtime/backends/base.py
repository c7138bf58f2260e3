"""The backend seam: one checked engine of a bundle in, `run(batch) -> outputs by name` out.

Every inference library the runtime can drive (ONNX Runtime today) is one
subclass of `Backend` in a module of its own, listed in the table of
`winclip.runtime.backends`. What a backend must do is small: build itself from
the bytes of one engine whose sha256 was checked (never from a path that could
change under it), run a preprocessed batch, and say what it runs on. Choosing
the engine (`policy.py`), preprocessing and scoring stay outside, shared by all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from winclip.runtime.contract import FORMAT_ONNX, Engine, Manifest
from winclip.runtime.errors import BundleError


@dataclass(frozen=True)
class BackendOptions:
    """How to open a backend: the user's choices, passed through unchanged."""

    device: str = "auto"  # what to run on, in the backend's words ("auto", "cpu", "cuda", ...)
    precision: str = "auto"  # auto | fp32 | fp16 | int8 (see policy.choose_engine)
    threads: int | None = None  # intra-op threads; None: all cores
    cache: bool = True  # keep optimised graphs / compiled blobs in the user's cache
    cache_dir: Path | None = None  # default: $XDG_CACHE_HOME/winclip-edge
    endpoint: str | None = None  # a served engine's address (triton://HOST:PORT/MODEL), for a remote backend
    wait: bool = False  # a remote backend: keep trying a server that cannot be reached at start
    engine_sha256: str | None = None  # run this engine where the bundle has it (a line profile's engine)
    inference_precision: str | None = None  # OpenVINO: f32 | bf16 compute for an fp32 engine (default f32)
    remeasure: bool = False  # backend auto: measure again instead of reusing the remembered choice


# keywords older callers (and Detector's former parameters) use for BackendOptions fields
FORMER_NAMES = {"provider": "device", "engine": "endpoint", "wait_for_engine": "wait"}


def with_engine_options(options: BackendOptions, **given) -> BackendOptions:
    """`options` with the fields named in `given` replaced (their former names accepted); TypeError for a
    keyword that is no field, as a function call would raise."""
    named = {FORMER_NAMES.get(key, key): value for key, value in given.items()}
    unknown = set(named) - {f.name for f in fields(BackendOptions)}
    if unknown:
        raise TypeError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
    return replace(options, **named) if named else options


class Backend(ABC):
    """One engine of a bundle, ready to run batches.

    Subclasses set `name` (the table's key) and `formats` (the engine formats
    they run, keys of contract.ENGINE_FORMATS) and implement `open`, `device`
    and `run`; a backend that runs an engine held in memory implements
    `from_bytes` too (the guard of a new engine runs it before it is written).
    What must be known before the class is imported (its library, its extra,
    whether auto measures it) is its row in `winclip.runtime.backends.BACKENDS`.
    `engine` is the manifest entry that runs and `reason` why it was chosen.
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = (FORMAT_ONNX,)  # engine formats it runs, best first

    def __init__(self, engine: Engine, reason: str):
        self.engine = engine
        self.reason = reason

    @classmethod
    @abstractmethod
    def open(cls, bundle, options: BackendOptions) -> "Backend":
        """Choose the engine for `options`, read its checked bytes from `bundle`, and get ready to run it."""

    @classmethod
    def from_bytes(cls, graph: bytes, engine: Engine, manifest: Manifest, options: BackendOptions = BackendOptions(),
                   *, weights: bytes | None = None) -> "Backend":
        """Run `engine` from bytes in memory (`weights`: its format's side file); checked by the caller, never
        written. A backend that only reaches a served engine cannot: BundleError."""
        raise BundleError(f"the {cls.name} backend cannot run an engine held in memory; use a local backend")

    @property
    @abstractmethod
    def device(self) -> str:
        """What the engine runs on, for people: "CPU", "CUDA", ..."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs by name for a (B, 3, H, W) float32 batch: one call into the library."""

    @property
    def live_batch(self) -> int | None:
        """The most frames of a live round one call should take (None: all of them). On a CPU, one: there a
        batch buys no speed and costs memory (docs/speed.md, "A station against one process per camera")."""
        return 1 if self.device.upper() == "CPU" else None

    def version(self) -> str:
        """The library's version (part of what a passed self-check vouches for)."""
        return ""

    def describe(self) -> str:
        """One line for people: which engine, why, on what."""
        return f"{self.engine.label} engine ({self.reason}) on {self.name} {self.device}"

    def close(self) -> None:
        """Free what the library holds (a no-op where the garbage collector does it)."""

    def check_outputs(self, outputs: dict[str, np.ndarray], manifest: Manifest, batch: int) -> None:
        """Every output the manifest names, with its shape, finite: else BundleError naming the output."""
        for name, shape in manifest.output_shapes().items():
            if name not in outputs:
                raise BundleError(f"the bundle's self-check failed: the engine gave no {name}")
            want = (batch, *shape[1:])
            if outputs[name].shape != want:
                raise BundleError(f"the bundle's self-check failed: {name} has shape {outputs[name].shape}, "
                                  f"the manifest says {list(want)}")
            if not np.isfinite(outputs[name]).all():
                raise BundleError(f"the bundle's self-check failed: {name} is not finite on a blank frame")
