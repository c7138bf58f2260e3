"""A backend that lives in one file outside the package, to prove that a new backend is one file and one row.

It runs the bundle's ONNX graphs through ONNX Runtime underneath, but it is its
own `Backend`: its own name, device, engine choice and `from_bytes`. A test
registers it by adding the row `Row("fake_backend:FakeBackend")` to
`winclip.runtime.backends.BACKENDS` and nothing else.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.backends.policy import choose_engine
from winclip.runtime.contract import Engine, Manifest


class FakeBackend(Backend):
    name = "fake"
    calls = 0  # batches run by every instance, for the test to see that this backend did the work

    def __init__(self, inner: Backend, engine: Engine, reason: str):
        super().__init__(engine, reason)
        self.inner = inner

    @classmethod
    def open(cls, bundle, options: BackendOptions) -> "FakeBackend":
        engine, reason = choose_engine(bundle.manifest, options.precision, "cpu", cls.formats, options.engine_sha256)
        graph, _ = bundle.read_engine(engine)
        backend = cls.from_bytes(graph, engine, bundle.manifest, options)
        backend.reason = f"fake: {reason}"
        return backend

    @classmethod
    def from_bytes(cls, graph: bytes, engine: Engine, manifest: Manifest, options: BackendOptions = BackendOptions(),
                   *, weights: bytes | None = None) -> "FakeBackend":
        from winclip.runtime.backends.onnxruntime import OnnxRuntimeBackend

        inner = OnnxRuntimeBackend.from_bytes(graph, engine, manifest, replace(options, device="cpu", cache=False))
        return cls(inner, engine, "fake")

    @property
    def device(self) -> str:
        return "pretend-CPU"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        type(self).calls += 1
        return self.inner.run(batch)

    def close(self) -> None:
        self.inner.close()
