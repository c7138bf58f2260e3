"""ONNX Runtime session for a bundle's graph: providers, threads, optimised-graph cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnxruntime as ort

from winclip.runtime.bundle import Bundle, BundleError, window_output_name

PROVIDERS = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(provider: str) -> list[str]:
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


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "winclip-edge"


def _cache_file(bundle: Bundle, cache_dir: Path | None) -> Path | None:
    """Where the optimised graph is kept: a folder of this user's, never the bundle.

    A file the bundle brought along would otherwise run instead of the
    checksummed graph; the user's own cache is keyed by the graph's sha256.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    return folder / f"{bundle.graph_sha256}-ort{ort.__version__}.onnx"


def create_session(bundle: Bundle, provider: str = "auto", threads: int | None = None,
                   cache: bool = True, cache_dir: Path | None = None) -> ort.InferenceSession:
    providers = choose_providers(provider)
    # Only the CPU provider's graph is cached, and only at the EXTENDED level: the
    # ALL level adds layout rewrites tuned to this CPU's vector width, which
    # must not follow the cache to another box. Loading the cached graph with
    # ALL redoes just those cheap rewrites (ViT-B-16+: 0.9 s vs 1.6 s).
    cached = _cache_file(bundle, cache_dir) if cache and providers == [CPU] else None
    if cached is not None and not cached.is_file():
        _write_cache(bundle.read_graph(), cached)
    session = None
    if cached is not None and cached.is_file():
        try:
            session = ort.InferenceSession(str(cached), _options(threads), providers=providers)
        except Exception:
            cached.unlink(missing_ok=True)  # broken: rebuilt on the next start
    if session is None:
        # From checked bytes, not the path: what was hashed is what runs, and a
        # graph that points at external data files cannot reach them.
        try:
            session = ort.InferenceSession(bundle.read_graph(), _options(threads), providers=providers)
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"onnxruntime cannot load {bundle.graph_file}: {str(exc).splitlines()[0]}") from None
    check_graph_io(bundle, session)
    return session


def _options(threads: int | None, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


def _write_cache(graph: bytes, cached: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=cached.parent)
    os.close(fd)
    options = _options(None, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = tmp
    try:
        ort.InferenceSession(graph, options, providers=[CPU])
        os.replace(tmp, cached)
    except Exception:
        pass  # the cache only saves start-up time; running without it is fine
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_graph_io(bundle: Bundle, session: ort.InferenceSession) -> None:
    """The manifest and the graph must agree on names and every static dimension."""
    declared = bundle.manifest["graph"]

    def compare(kind: str, want: dict, got: list) -> None:
        got_map = {node.name: node.shape for node in got}
        if list(want) != list(got_map):
            raise BundleError(f"manifest {kind} {list(want)} disagree with the graph's {list(got_map)}")
        for name, shape in want.items():
            actual = got_map[name]
            static_ok = len(shape) == len(actual) and all(
                isinstance(w, str) or w == a for w, a in zip(shape, actual))
            if not static_ok:
                raise BundleError(f"manifest says {name} is {shape}, the graph says {actual}")

    compare("inputs", declared["inputs"], session.get_inputs())
    compare("outputs", declared["outputs"], session.get_outputs())
    counts = bundle.manifest["windows"]["counts"]
    for k in bundle.scales:
        shape = declared["outputs"].get(window_output_name(k))
        if shape is None or str(k) not in counts or shape[1] != counts[str(k)]:
            raise BundleError(f"manifest window count for scale {k} disagrees with the graph output {shape}")
