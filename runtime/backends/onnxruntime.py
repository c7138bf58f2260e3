"""The ONNX Runtime backend: providers, session options, the optimised-graph cache, IO binding.

What runs is what was hashed: the session is made from a private copy of the
engine written as it is streamed and checked (`Bundle.engine_copy`), or from
checked bytes, never from the bundle's path; a graph that names external data is
refused first (onnxruntime would resolve such a reference against the working
directory). On the CPU provider the EXTENDED-level optimised graph is cached in
the user's cache, keyed by the engine's sha256 and the onnxruntime version (a
folder holding the graph and its weights beside it), so later starts only hash
the engine and skip the optimisation. On CUDA, IO binding
copies the batch to the device once and the outputs straight back into host arrays.

Memory: no copy of the graph is held in this process while onnxruntime reads
it, what onnxruntime frees while it makes the session goes back to the system
(heap.py), and the session options below leave out the memory pattern's extra
block and, for fp32, the pre-packed second copy of the weights (docs/speed.md
has the numbers).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.backends.policy import choose_engine
from winclip.runtime.cache import cache_path, prune_cache, touch
from winclip.runtime.contract import Engine, Manifest
from winclip.runtime.defaults import PROVIDERS
from winclip.runtime.errors import BundleError, first_line, install_hint
from winclip.runtime.graph_check import require_inline_weights
from winclip.runtime.heap import release_free_heap

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
            raise BundleError(f"CUDA was asked for but this onnxruntime has no CUDA provider: {install_hint('gpu')}")
        return PROVIDER_LISTS["cpu"], "provider auto: this onnxruntime has no CUDA, so the CPU"
    problem = cuda_libraries_problem()
    if problem is None:
        return PROVIDER_LISTS["cuda"], ""
    if provider == "cuda":
        raise BundleError(f"CUDA was asked for, but onnxruntime cannot start it: {problem} ({install_hint('gpu')} "
                          "brings the CUDA and cuDNN libraries; the box needs the NVIDIA driver)")
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


# Pre-packing copies every weight into its kernel's own layout while the session is made, and
# both copies live until the session is ready: it doubles the start-up peak. int8 kernels run
# markedly faster with it; fp32 ones no faster, so fp32 skips it (benchmarks/bench_memory.py
# --parts settings measures both in one run).
PREPACK_WEIGHTS = {"fp32": False, "fp16": True, "int8": True}


def session_options(threads: int | None, precision: str = "fp32", providers=(CPU,),
                    level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, prepack: bool | None = None) -> ort.SessionOptions:
    """Session options; threads None: all cores; prepack None: as PREPACK_WEIGHTS says for the precision.

    fp16 graphs on the CPU provider stop at the EXTENDED level: onnxruntime 1.32's
    CPU layout rewrites (ALL) crash the process on them (a segmentation fault at
    session creation, seen on x86-64). The memory pattern is off: it plans one
    more block per input shape beside the arena (about 90 MB on ViT-B-16+ int8);
    that costs int8 2-5 % per frame on a quiet VNNI CPU and fp32 nothing, and
    the memory is the scarcer resource on an edge box (docs/speed.md).
    """
    options = ort.SessionOptions()
    if precision == "fp16" and providers[0] == CPU:
        level = min(level, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, key=int)
    options.graph_optimization_level = level
    options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
    options.enable_mem_pattern = False
    if not (PREPACK_WEIGHTS.get(precision, True) if prepack is None else prepack):
        options.add_session_config_entry("session.disable_prepacking", "1")
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
        return cls.from_engine_file(bundle, engine, options, providers, reason + (f"; {note}" if note else ""))

    @classmethod
    def from_engine_file(cls, bundle, engine: Engine, options: BackendOptions, providers: list[str],
                         reason: str = "") -> "OnnxRuntimeBackend":
        """A backend over one engine of a bundle, without ever holding the graph's bytes.

        With the optimised graph cached, the engine is hashed as it streams past and
        the cached graph loads. Otherwise onnxruntime reads a private copy written as
        the engine was hashed (one read of the engine either way) (in the cache folder, or the temporary folder without a
        cache); where no copy can be written, it reads the checked bytes.
        """
        cached = _cache_entry(engine.sha256, options, providers)
        if cached is not None and (cached / CACHED_GRAPH).is_file():
            # the cached graph stands for these very bytes: they are checked as they stream past (once;
            # without a cached graph the copy below checks them as it is written)
            sha256 = bundle.hash_engine(engine)
            if sha256 != engine.sha256:  # a bundle loaded without checksum verification
                cached = _cache_entry(sha256, options, providers)
        session_opts = session_options(options.threads, engine.precision, providers)
        session = _cached_session(cached, session_opts, providers)
        if session is None:
            folder = cached.parent if cached else Path(tempfile.gettempdir())
            try:
                with bundle.engine_copy(engine, folder) as (copy, got):
                    if cached is not None and got != engine.sha256:
                        cached = _cache_entry(got, options, providers)
                    session = _checked_session(copy, engine, session_opts, providers, cached)
            except OSError:  # no room or no write access for a copy
                graph, sha256 = bundle.read_engine(engine)
                return cls.from_bytes(graph, engine, bundle.manifest, options, providers, reason, sha256)
        check_graph_io(bundle.manifest, session, engine.file)
        _check_provider(session, providers, engine)
        return cls(session, engine, reason)

    @classmethod
    def from_bytes(cls, graph: bytes, engine: Engine, manifest: Manifest, options: BackendOptions = BackendOptions(),
                   providers: list[str] | None = None, reason: str = "", sha256: str | None = None,
                   *, weights: bytes | None = None) -> "OnnxRuntimeBackend":
        """A backend over graph bytes (an engine of a bundle, or one being made and guarded)."""
        if weights is not None:
            raise BundleError(f"engine {engine.file}: an ONNX graph holds its weights inline, it takes no side file")
        providers = providers or choose_providers(options.device)[0]
        session_opts = session_options(options.threads, engine.precision, providers)
        cached = _cache_entry(sha256, options, providers) if sha256 is not None else None
        session = _checked_session(graph, engine, session_opts, providers, cached)
        check_graph_io(manifest, session, engine.file)
        _check_provider(session, providers, engine)
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


CACHED_GRAPH, CACHED_WEIGHTS = "graph.onnx", "graph.onnx.data"  # the files of a cache entry


def _cache_entry(sha256: str, options: BackendOptions, providers: list[str]) -> Path | None:
    """The cache folder of the engine with this sha256 (its optimised graph and weights); None without a cache.

    Only the CPU provider's graph is cached, and only at the EXTENDED level: the
    ALL level adds layout rewrites tuned to this CPU's vector width, which must
    not follow the cache to another box. Loading the cached graph with ALL
    redoes just those cheap rewrites.
    """
    if not options.cache or providers != [CPU]:
        return None
    return cache_path(f"{sha256}-ort{ort.__version__}", options.cache_dir)


def _cached_session(entry: Path | None, session_opts, providers) -> ort.InferenceSession | None:
    """A session over a cached optimised graph, or None when there is none (a broken entry is dropped)."""
    if entry is None:
        return None
    if not (entry / CACHED_GRAPH).is_file():
        shutil.rmtree(entry, ignore_errors=True)  # an entry with a part missing
        return None
    try:
        session = ort.InferenceSession(str(entry / CACHED_GRAPH), session_opts, providers=providers)
    except Exception:
        shutil.rmtree(entry, ignore_errors=True)  # broken: rebuilt from the engine
        return None
    touch(entry)  # used now: the cache prunes the entries used least recently
    release_free_heap()
    return session


def _checked_session(graph: bytes | Path, engine: Engine, session_opts, providers,
                     cached: Path | None) -> ort.InferenceSession:
    """A session over checked graph bytes, or a private checked copy of them: refused if it names external
    data; through the optimised-graph cache where there is one."""
    require_inline_weights(graph, engine.file)
    if cached is not None:
        _write_cache(graph, cached)
        prune_cache(cached.parent, keep=cached)
        session = _cached_session(cached, session_opts, providers)
        if session is not None:
            return session
    try:
        session = ort.InferenceSession(str(graph) if isinstance(graph, Path) else graph, session_opts,
                                       providers=providers)
    except Exception as exc:
        raise BundleError(f"onnxruntime cannot load {engine.file}: {first_line(exc)}") from None
    release_free_heap()
    return session


def _write_cache(graph: bytes | Path, entry: Path) -> None:
    """Write the EXTENDED-level optimised graph as the cache entry `entry`: in a temporary folder, renamed
    into place whole (a concurrent start that got there first keeps its own, as good)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    except OSError:
        return
    # this session only writes the optimised graph and never runs: no pre-packed copy of the weights
    options = session_options(None, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, prepack=False)
    options.optimized_model_filepath = str(tmp / CACHED_GRAPH)
    # Weights go to a file beside the graph as they are written; written inline, the whole graph
    # would be serialised in memory with them, a second copy of every weight at the peak.
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", CACHED_WEIGHTS)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(graph) if isinstance(graph, Path) else graph, options, providers=[CPU])
        os.rename(tmp, entry)
    except Exception:
        pass  # the cache only saves start-up time; running without it is fine
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        release_free_heap()


def _check_provider(session: ort.InferenceSession, providers: list[str], engine: Engine) -> None:
    """What the session got, not what it was offered: offered CUDA and started elsewhere is CudaDidNotStart."""
    if providers[0] == CUDA and session.get_providers()[0] != CUDA:
        raise CudaDidNotStart(f"CUDA was asked for, but onnxruntime started {engine.file} on "
                              f"{session.get_providers()[0].replace('ExecutionProvider', '')} instead (no usable "
                              "GPU, driver or CUDA library); use --provider cpu, or fix the CUDA install")


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
