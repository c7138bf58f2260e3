"""The ONNX Runtime backend: providers, session options, the optimised-graph cache, IO binding.

The session is made from the engine's checked bytes, never from its path, so
what was hashed is what runs; a graph that names external data is refused first
(onnxruntime would resolve such a reference against the working directory).
On the CPU provider the EXTENDED-level optimised graph is cached in the user's
cache, keyed by the engine's sha256 and the onnxruntime version, so later starts
skip the optimisation. On CUDA, IO binding copies the batch to the device once
and the outputs straight back into host arrays.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.backends.policy import choose_engine
from winclip.runtime.cache import cache_path, prune_cache, touch
from winclip.runtime.contract import Engine, Manifest
from winclip.runtime.defaults import PROVIDERS
from winclip.runtime.errors import BundleError, first_line
from winclip.runtime.graph_check import require_inline_weights

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# --provider -> onnxruntime's provider list; auto takes the first row whose first provider is available
PROVIDER_LISTS = {"cuda": [CUDA, CPU], "cpu": [CPU]}


class CudaDidNotStart(BundleError):
    """The session was offered CUDA and started on another provider."""


def choose_providers(provider: str) -> tuple[list[str], str]:
    """onnxruntime provider list for 'auto', 'cuda' or 'cpu', and a note on the choice ("" when plain).

    CUDA counts only where its libraries load: onnxruntime-gpu lists the CUDA provider on any box and
    then quietly runs on the CPU when the CUDA or cuDNN libraries are missing. 'cuda' then fails in one
    line naming the library that did not load; 'auto' falls back to the CPU and says why.
    """
    if provider not in ("auto", *PROVIDER_LISTS):
        raise BundleError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if provider == "cpu":
        return PROVIDER_LISTS["cpu"], ""
    if CUDA not in available:
        if provider == "cuda":
            raise BundleError("CUDA was asked for but this onnxruntime has no CUDA provider: install winclip-edge[gpu]")
        return PROVIDER_LISTS["cpu"], "provider auto: this onnxruntime has no CUDA, so the CPU"
    problem = cuda_libraries_problem()
    if problem is None:
        return PROVIDER_LISTS["cuda"], ""
    if provider == "cuda":
        raise BundleError(f"CUDA was asked for, but onnxruntime cannot start it: {problem} (pip install "
                          "'winclip-edge[gpu]' brings the CUDA and cuDNN libraries; the box needs the NVIDIA driver)")
    return PROVIDER_LISTS["cpu"], f"provider auto: CUDA libraries do not load ({problem}), so the CPU"


@functools.lru_cache(maxsize=1)
def cuda_libraries_problem() -> str | None:
    """Load the CUDA and cuDNN libraries (from the nvidia-* wheels of the [gpu] extra, where installed) and
    onnxruntime's CUDA provider; the first thing that did not load, in words, or None when all did."""
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per missing library; ours says it once
            try:
                ort.preload_dlls(msvc=False)
            except Exception:  # a failed preload shows up below, where it matters
                pass
    name = "onnxruntime_providers_cuda.dll" if platform.system() == "Windows" else "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(Path(ort.__file__).parent / "capi" / name))
    except OSError as exc:
        return first_line(exc)
    return None


def session_options(threads: int | None, precision: str = "fp32", providers=(CPU,),
                    level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.SessionOptions:
    """Session options; threads None: all cores.

    fp16 graphs on the CPU provider stop at the EXTENDED level: onnxruntime 1.32's
    CPU layout rewrites (ALL) crash the process on them (a segmentation fault at
    session creation, seen on x86-64).
    """
    options = ort.SessionOptions()
    if precision == "fp16" and providers[0] == CPU:
        level = min(level, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, key=int)
    options.graph_optimization_level = level
    options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


class OnnxRuntimeBackend(Backend):
    """An onnxruntime InferenceSession over one checked engine."""

    name = "onnxruntime"

    def __init__(self, session: ort.InferenceSession, engine: Engine, reason: str):
        super().__init__(engine, reason)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def open(cls, bundle, options: BackendOptions) -> "OnnxRuntimeBackend":
        providers, note = choose_providers(options.device)
        try:
            return cls._open_on(bundle, options, providers, note)
        except CudaDidNotStart:
            if options.device == "cuda":
                raise
            return cls._open_on(bundle, options, PROVIDER_LISTS["cpu"], "provider auto: CUDA did not start, so the CPU")

    @classmethod
    def _open_on(cls, bundle, options: BackendOptions, providers: list[str], note: str) -> "OnnxRuntimeBackend":
        engine, reason = choose_engine(bundle.manifest, options.precision, "cuda" if providers[0] == CUDA else "cpu",
                                       engine_sha256=options.engine_sha256)
        graph, sha256 = bundle.read_engine(engine)
        return cls.from_bytes(graph, engine, bundle.manifest, options, providers, reason + (f"; {note}" if note else ""),
                              sha256)

    @classmethod
    def from_bytes(cls, graph: bytes, engine: Engine, manifest: Manifest, options: BackendOptions = BackendOptions(),
                   providers: list[str] | None = None, reason: str = "", sha256: str | None = None,
                   ) -> "OnnxRuntimeBackend":
        """A backend over graph bytes (an engine of a bundle, or one being made and guarded)."""
        providers = providers or choose_providers(options.device)[0]
        require_inline_weights(graph, engine.file)
        # Only the CPU provider's graph is cached, and only at the EXTENDED level: the
        # ALL level adds layout rewrites tuned to this CPU's vector width, which must
        # not follow the cache to another box. Loading the cached graph with ALL
        # redoes just those cheap rewrites.
        session_opts = session_options(options.threads, engine.precision, providers)
        cached = None
        if options.cache and providers == [CPU] and sha256 is not None:
            cached = cache_path(f"{sha256}-ort{ort.__version__}.onnx", options.cache_dir)
        if cached is not None and not cached.is_file():
            _write_cache(graph, cached)
            prune_cache(cached.parent, keep=cached)
        session = None
        if cached is not None and cached.is_file():
            try:
                session = ort.InferenceSession(str(cached), session_opts, providers=providers)
                touch(cached)
            except Exception:
                cached.unlink(missing_ok=True)  # broken: rebuilt on the next start
        if session is None:
            try:
                session = ort.InferenceSession(graph, session_opts, providers=providers)
            except Exception as exc:
                raise BundleError(f"onnxruntime cannot load {engine.file}: {first_line(exc)}") from None
        check_graph_io(manifest, session, engine.file)
        if providers[0] == CUDA and session.get_providers()[0] != CUDA:  # what the session got, not what it was offered
            raise CudaDidNotStart(f"CUDA was asked for, but onnxruntime started {engine.file} on "
                                  f"{session.get_providers()[0].replace('ExecutionProvider', '')} instead (no usable "
                                  "GPU, driver or CUDA library); use --provider cpu, or fix the CUDA install")
        return cls(session, engine, reason)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def device(self) -> str:
        return self.providers[0].replace("ExecutionProvider", "")

    def version(self) -> str:
        return f"onnxruntime {ort.__version__} {self.providers[0]}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.providers[0] == CUDA:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: batch})))


def _write_cache(graph: bytes, cached: Path) -> None:
    try:
        fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=cached.parent)
    except OSError:
        return
    os.close(fd)
    options = session_options(None, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = tmp
    try:
        ort.InferenceSession(graph, options, providers=[CPU])
        os.replace(tmp, cached)
    except Exception:
        pass  # the cache only saves start-up time; running without it is fine
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_graph_io(manifest: Manifest, session: ort.InferenceSession, name: str) -> None:
    """The manifest and the graph must agree on names and every static dimension."""

    def compare(kind: str, want: dict, got: list) -> None:
        got_map = {node.name: node.shape for node in got}
        if list(want) != list(got_map):
            raise BundleError(f"{name}: the manifest's {kind} {list(want)} disagree with the graph's {list(got_map)}")
        for key, shape in want.items():
            actual = got_map[key]
            static_ok = len(shape) == len(actual) and all(
                isinstance(w, str) or w == a for w, a in zip(shape, actual))
            if not static_ok:
                raise BundleError(f"{name}: the manifest says {key} is {shape}, the graph says {actual}")

    compare("inputs", manifest.input_shapes(), session.get_inputs())
    compare("outputs", manifest.output_shapes(), session.get_outputs())
