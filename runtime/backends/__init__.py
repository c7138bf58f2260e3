"""Inference backends and the table that names them.

`BACKENDS` maps a backend's name to the class that runs it, as an import path
so that nothing is imported until a backend is chosen (`import winclip.runtime`
pulls no inference library). A new backend is one module in this package (a
`Backend` subclass, see base.py) and one row here. The row "auto" is not a
library: it measures the local backends on this machine and opens the fastest
(auto.py).
"""

from __future__ import annotations

from importlib import import_module

from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.defaults import TRITON_SCHEME
from winclip.runtime.errors import BundleError, MissingExtra, install_hint

BACKENDS: dict[str, str] = {
    "onnxruntime": "winclip.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "triton": "winclip.runtime.backends.triton:TritonBackend",
    "openvino": "winclip.runtime.backends.openvino:OpenVinoBackend",
    "auto": "winclip.runtime.backends.auto:MeasuredChoice",
}
# what to install for each backend's library, named in the error when it is missing
EXTRAS = {"onnxruntime": f"{install_hint('cpu')} (or [gpu] on a CUDA box)",
          "triton": install_hint("triton-client"),
          "openvino": install_hint("openvino")}
DEFAULT_BACKEND = "onnxruntime"
# a served engine's address scheme -> the backend that speaks to it (--engine triton://HOST:PORT/MODEL)
SCHEMES: dict[str, str] = {TRITON_SCHEME: "triton"}

__all__ = ["BACKENDS", "Backend", "BackendOptions", "backend_class", "backend_for_address", "default_backend",
           "open_backend"]


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass of a table row; BundleError for an unknown name, MissingExtra for a missing library."""
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    try:
        return getattr(import_module(module), cls)
    except ImportError as exc:
        raise MissingExtra(f"the {name} backend needs {exc.name}: {EXTRAS.get(name, 'see the docs')}") from None


def default_backend() -> str:
    """The backend a command runs when none is asked for: auto where more than one local backend is installed
    (it measures which one is fastest on this CPU, and remembers), else ONNX Runtime. Found without importing."""
    from importlib.util import find_spec

    from winclip.runtime.backends.auto import MEASURED

    def installed(module: str) -> bool:
        try:
            return find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or blocked package is as good as none
            return False

    return "auto" if sum(installed(module) for module in MEASURED.values()) > 1 else DEFAULT_BACKEND


def backend_for_address(address: str) -> str:
    """The backend that reaches a served engine at `address` (by its scheme); BundleError for an unknown one."""
    scheme = address.partition("://")[0] if "://" in address else ""
    if scheme not in SCHEMES:
        raise BundleError(f"engine address {address!r}: use {' or '.join(f'{s}://...' for s in SCHEMES)}")
    return SCHEMES[scheme]


def open_backend(bundle, name: str = DEFAULT_BACKEND, options: BackendOptions = BackendOptions()) -> Backend:
    """The chosen engine of `bundle`, opened with the named backend."""
    return backend_class(name).open(bundle, options)
