"""ONNX Runtime sessions for a bundle's engines: providers, precision, optimised-graph cache."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import Engine, Manifest
from winclip.runtime.defaults import PRECISIONS, PROVIDERS
from winclip.runtime.errors import BundleError, first_line
from winclip.runtime.graph_check import GraphFormatError, external_tensors

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(provider: str) -> list[str]:
    """onnxruntime provider list for 'auto', 'cuda' or 'cpu'."""
    available = ort.get_available_providers()
    if provider == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if provider == "cuda":
        if CUDA not in available:
            raise BundleError("CUDA was asked for but this onnxruntime has no CUDA provider: install winclip-edge[gpu]")
        return [CUDA, CPU]
    if provider == "cpu":
        return [CPU]
    raise BundleError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")


def choose_engine(manifest: Manifest, precision: str, providers: list[str]) -> tuple[Engine, str]:
    """The engine to run and why: auto is fp16 on CUDA, a guarded int8 on CPU, else fp32."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
        try:
            return manifest.engine(precision), "asked for"
        except KeyError:
            raise BundleError(f"this bundle has no {precision} engine (it has: {', '.join(manifest.precisions)}); "
                              f"add one with winclip-quantize BUNDLE --precision {precision}") from None
    by_precision = {e.precision: e for e in manifest.engines}
    admitted = lambda e: e is not None and not e.accepted_degraded  # noqa: E731
    if providers[0] == CUDA and admitted(by_precision.get("fp16")):
        return by_precision["fp16"], "auto: fp16 on CUDA"
    if providers[0] == CPU and admitted(by_precision.get("int8")):
        return by_precision["int8"], "auto: guarded int8 on CPU"
    if "fp32" in by_precision:
        return by_precision["fp32"], "auto: fp32"
    return manifest.engines[0], f"auto: the bundle's only engine ({manifest.engines[0].precision})"


@dataclass
class EngineSession:
    """A session over one checked engine of a bundle."""

    session: ort.InferenceSession
    engine: Engine
    reason: str  # why this engine was chosen

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "winclip-edge"


def cache_path(name: str, cache_dir: Path | None) -> Path | None:
    """A file of this user's cache folder (None when it cannot be written): never inside a bundle.

    A file that came with a bundle would run instead of the checksummed graph, so
    cached graphs are the user's own, keyed by the sha256 of the bytes that were
    read; names are derived from hashes only.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    return folder / name


def create_session(bundle: Bundle, provider: str = "auto", precision: str = "auto", threads: int | None = None,
                   cache: bool = True, cache_dir: Path | None = None) -> EngineSession:
    """An onnxruntime session over the chosen engine's checked bytes.

    provider: auto | cuda | cpu. precision: auto | fp32 | fp16 | int8 (see
    choose_engine). threads: intra-op threads (None: all cores). The CPU
    provider's optimised graph is cached per graph hash (cache_dir, default
    $XDG_CACHE_HOME/winclip-edge) so that later starts skip the optimisation.
    """
    providers = choose_providers(provider)
    engine, reason = choose_engine(bundle.manifest, precision, providers)
    if provider == "auto" and providers == [CPU]:
        reason += "; provider auto: this onnxruntime has no CUDA, so the CPU"
    graph, sha256 = bundle.read_engine(engine)
    try:
        external = external_tensors(graph)
    except GraphFormatError as exc:
        raise BundleError(f"{engine.file} is not a well-formed ONNX model: {exc}") from None
    if external:
        raise BundleError(f"{engine.file} points at external data for {len(external)} tensors (e.g. {external[0]!r}); "
                          "a bundle's graphs must hold their weights inline")
    # Only the CPU provider's graph is cached, and only at the EXTENDED level: the
    # ALL level adds layout rewrites tuned to this CPU's vector width, which
    # must not follow the cache to another box. Loading the cached graph with
    # ALL redoes just those cheap rewrites.
    options = session_options(threads, engine.precision, providers)
    cached = cache_path(f"{sha256}-ort{ort.__version__}.onnx", cache_dir) if cache and providers == [CPU] else None
    if cached is not None and not cached.is_file():
        _write_cache(graph, cached)
    session = None
    if cached is not None and cached.is_file():
        try:
            session = ort.InferenceSession(str(cached), options, providers=providers)
        except Exception:
            cached.unlink(missing_ok=True)  # broken: rebuilt on the next start
    if session is None:
        # From checked bytes, not the path: what was hashed is what runs.
        try:
            session = ort.InferenceSession(graph, options, providers=providers)
        except Exception as exc:
            raise BundleError(f"onnxruntime cannot load {engine.file}: {first_line(exc)}") from None
    check_graph_io(bundle.manifest, session, engine.file)
    if engine.accepted_degraded:
        warnings.warn(f"the {engine.precision} engine of this bundle FAILED its accuracy guard and was added with "
                      f"--accept-degraded: {engine.guard}", stacklevel=2)
    return EngineSession(session, engine, reason)


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
