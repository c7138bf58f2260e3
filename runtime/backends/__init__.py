"""Inference backends and the one table that names them.

A new backend is one module in this package (a `Backend` subclass, see
base.py) and one row of `BACKENDS`. The row "auto" is not a library: it
measures the local backends on this machine and opens the fastest (auto.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from winclip.runtime.backends.base import Backend, BackendOptions, with_engine_options
from winclip.runtime.defaults import TRITON_SCHEME
from winclip.runtime.errors import BundleError, MissingExtra, install_hint


@dataclass(frozen=True)
class Row:
    """A backend as the table knows it before choosing it.

    Importing a backend's module imports its library (seconds for OpenVINO), yet
    every command must know, before any is chosen, which backends are installed
    (the default, auto's candidates) and what to install when one is missing (the
    import failed, so there is no class to ask). Those facts are the row's; what
    is known once the class is loaded (engine formats, `from_bytes`, the
    library's version on an open backend) is the class's."""

    path: str  # "module:Class", imported only when the backend is chosen
    library: str | None = None  # the library's import name: found (never imported) to tell it is installed
    extra: str = "see the docs"  # what to install when the library is missing
    measured: bool = False  # auto times it against the others (a local library, not a remote server)


BACKENDS: dict[str, Row] = {
    "onnxruntime": Row("winclip.runtime.backends.onnxruntime:OnnxRuntimeBackend", "onnxruntime",
                       f"{install_hint('cpu')} (or [gpu] on a CUDA box)", measured=True),
    "triton": Row("winclip.runtime.backends.triton:TritonBackend", "tritonclient", install_hint("triton-client")),
    "openvino": Row("winclip.runtime.backends.openvino:OpenVinoBackend", "openvino", install_hint("openvino"),
                    measured=True),
    "auto": Row("winclip.runtime.backends.auto:MeasuredChoice"),
}
DEFAULT_BACKEND = "onnxruntime"
# a served engine's address scheme -> the backend that speaks to it (--engine triton://HOST:PORT/MODEL)
SCHEMES: dict[str, str] = {TRITON_SCHEME: "triton"}

__all__ = ["BACKENDS", "Backend", "BackendOptions", "Row", "backend_class", "backend_for_address",
           "default_backend", "installed", "measured_backends", "open_backend", "with_engine_options"]


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass of a table row; BundleError for an unknown name, MissingExtra for a missing library.

    This is where a backend's library is first needed: a command checks the backend it was given (and only
    that one) with it before any other work, so a box without one library runs the others."""
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    row = BACKENDS[name]
    module, _, cls = row.path.partition(":")
    try:
        return getattr(import_module(module), cls)
    except ImportError as exc:
        raise MissingExtra(f"the {name} backend needs {exc.name or row.library or module}: {row.extra}") from None


def installed(name: str) -> bool:
    """Whether the library of backend `name` is installed, found without importing it."""
    from importlib.util import find_spec

    library = BACKENDS[name].library
    if library is None:
        return True
    try:
        return find_spec(library) is not None
    except (ImportError, ValueError):  # a broken or blocked package is as good as none
        return False


def measured_backends() -> list[str]:
    """The rows auto times against each other (installed or not: auto names the missing ones)."""
    return [name for name, row in BACKENDS.items() if row.measured]


def default_backend() -> str:
    """The backend a command runs when none is asked for: auto where more than one local backend is installed
    (it measures which one is fastest on this CPU, and remembers), else ONNX Runtime. Found without importing."""
    return "auto" if sum(installed(name) for name in measured_backends()) > 1 else DEFAULT_BACKEND


def backend_for_address(address: str) -> str:
    """The backend that reaches a served engine at `address` (by its scheme); BundleError for an unknown one."""
    scheme = address.partition("://")[0] if "://" in address else ""
    if scheme not in SCHEMES:
        raise BundleError(f"engine address {address!r}: use {' or '.join(f'{s}://...' for s in SCHEMES)}")
    return SCHEMES[scheme]


def open_backend(bundle, name: str = DEFAULT_BACKEND, options: BackendOptions = BackendOptions()) -> Backend:
    """The chosen engine of `bundle`, opened with the named backend."""
    return backend_class(name).open(bundle, options)
