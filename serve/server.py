"""A real Triton Inference Server, started through PyTriton, running a bundle's engine with our own backend.

PyTriton starts the `tritonserver` binary its wheel ships (with the python
backend only) and binds a Python callable as a model: here, the bundle's chosen
engine opened with the ONNX Runtime backend (`open_backend`), so the server runs
exactly what `winclip-inspect` runs locally. Triton does the rest: gRPC and
HTTP endpoints, dynamic batching across clients, `/v2/health/ready`, Prometheus
metrics. The model is served under the version that carries the engine's
sha256 (winclip.runtime.served), which is what the edge clients check.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from winclip.runtime.backends import DEFAULT_BACKEND, Backend, BackendOptions, open_backend
from winclip.runtime.bundle import Bundle
from winclip.runtime.defaults import SERVED_MODEL_NAME, TRITON_PORTS
from winclip.runtime.errors import MissingExtra, WinclipError, install_hint
from winclip.runtime.served import ServedAddress, check_model_name, served_version
from winclip.serve import defaults

log = logging.getLogger(__name__)

SERVE_EXTRA = f"{install_hint('cpu,serve')} (in a venv of its own: nvidia-pytriton pins numpy<2)"
# PyTriton puts Unix sockets in its workspace: the whole socket path must fit in 107 bytes
SHORT_PATH = 40


class ServeError(WinclipError):
    """The server could not be started or stopped working."""


@dataclass(frozen=True)
class ServeOptions:
    """How to serve: which engine, how Triton batches it, where it listens."""

    backend: str = DEFAULT_BACKEND  # a local backend, or auto (winclip-serve: auto where two are installed)
    engine: BackendOptions = BackendOptions()  # how the engine opens: device, precision, threads, cache, ...
    model_name: str = SERVED_MODEL_NAME
    max_batch: int = defaults.MAX_BATCH
    max_queue_delay_us: int = defaults.MAX_QUEUE_DELAY_US
    dynamic_batching: bool = True
    instances: int = defaults.INSTANCES
    host: str = defaults.HOST
    http_port: int = TRITON_PORTS["http"]
    grpc_port: int = TRITON_PORTS["grpc"]
    metrics_port: int = TRITON_PORTS["metrics"]
    exit_timeout_s: int = defaults.EXIT_TIMEOUT_S


def use_own_libpython() -> str | None:
    """Put this interpreter's own libpython first on the library path of the processes Triton starts.

    The python backend's stub links `libpython3.X.so`. Found on the system's
    path, that library may belong to another build of Python than the one
    running (pyenv, a custom build), and the stub then dies while the model
    loads ("'_thread.RLock' object has no attribute '_recursion_count'").
    PyTriton hands the server a copy of os.environ, so setting it here is
    enough. Returns the directory put first, or None for a Python without a
    shared library (the stub then takes the system's, which must match).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not Path(libdir).is_dir():
        log.warning("this Python has no shared libpython; Triton's python backend will load the system's, "
                    "which must be the same build")
        return None
    rest = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *rest])
    return libdir


def short_workspace() -> Path:
    """A fresh folder for PyTriton's workspace whose path leaves room for its socket names.

    Its default ($XDG_CACHE_HOME/pytriton/...) can be too long for a Unix socket
    ("AF_UNIX path too long" while the model loads) under a long cache path.
    """
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="winclip-serve-", dir=base if len(base) <= SHORT_PATH else "/tmp"))


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """ServeError naming the first port something already listens on.

    Checked before Triton starts: a Triton that cannot bind exits, and PyTriton
    would then talk to whatever server holds the port.
    """
    for name, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to Triton too
            try:
                s.bind((host, port))
            except OSError as exc:
                raise ServeError(f"--{name}-port {port} on {host}: {exc.strerror or exc}") from None


def _infer_function(backend: Backend, input_name: str):
    """The callable PyTriton binds: a batch of requests (joined by @batch) through the engine, float32 out."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        outputs = backend.run(np.ascontiguousarray(inputs[input_name], dtype=np.float32))
        return {name: np.asarray(array, dtype=np.float32) for name, array in outputs.items()}

    return infer


class EngineServer:
    """A bundle's engine behind Triton. `start()` returns once the model is ready; `stop()` drains and ends it."""

    def __init__(self, bundle_path: str | Path, options: ServeOptions = ServeOptions()):
        check_model_name(options.model_name)
        self.options = options
        self.bundle = Bundle.load(bundle_path)
        self.backend = open_backend(self.bundle, options.backend, options.engine)
        self.engine = self.backend.engine
        self.version = served_version(self.engine.sha256)
        self.triton = None
        self.workspace: Path | None = None

    @property
    def address(self) -> ServedAddress:
        """What an edge client passes as --engine (with the host it can reach this server at)."""
        return ServedAddress(self.options.host, self.options.grpc_port, self.options.model_name)

    def describe(self) -> str:
        o = self.options
        batching = (f"dynamic batching up to {o.max_batch} frames, {o.max_queue_delay_us} us queue delay"
                    if o.dynamic_batching else f"no dynamic batching (batches of up to {o.max_batch} per request)")
        return (f"{self.address}: {self.backend.describe()}, version {self.version}; {batching}; "
                f"{o.instances} instance(s); health http://{o.host}:{o.http_port}/v2/health/ready, "
                f"metrics http://{o.host}:{o.metrics_port}/metrics")

    def start(self) -> None:
        """Start Triton with the model bound; ServeError (one line) when it does not come up."""
        o = self.options
        check_ports_free(o.host, {"http": o.http_port, "grpc": o.grpc_port, "metrics": o.metrics_port})
        use_own_libpython()
        try:
            from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
            from pytriton.triton import Triton, TritonConfig
        except ImportError as exc:
            raise MissingExtra(f"winclip-serve needs {exc.name}: {SERVE_EXTRA}") from None
        logging.getLogger("pytriton").setLevel(logging.WARNING)  # its own chatter; Triton's log is on stdout
        m = self.bundle.manifest
        config = TritonConfig(http_address=o.host, grpc_address=o.host, metrics_address=o.host,
                              http_port=o.http_port, grpc_port=o.grpc_port, metrics_port=o.metrics_port,
                              exit_timeout_secs=o.exit_timeout_s, strict_readiness=True, log_verbose=0)
        inputs = [Tensor(name=n, dtype=np.float32, shape=tuple(s[1:])) for n, s in m.input_shapes().items()]
        outputs = [Tensor(name=n, dtype=np.float32, shape=tuple(s[1:])) for n, s in m.output_shapes().items()]
        batcher = DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us) if o.dynamic_batching else None
        infer = _infer_function(self.backend, m.input_name)
        self.workspace = short_workspace()
        triton = Triton(config=config, workspace=self.workspace / "pytriton")
        try:
            triton.bind(o.model_name, [infer] * o.instances, inputs=inputs, outputs=outputs,
                        model_version=self.version, config=ModelConfig(max_batch_size=o.max_batch, batcher=batcher))
            triton.run()
        except Exception as exc:  # PyTriton raises its own errors, RuntimeError and TimeoutError
            try:
                triton.stop()
            except Exception as stop_exc:  # what could not be stopped is gone with this process
                log.debug("stopping PyTriton after a failed start: %s", stop_exc)
            shutil.rmtree(self.workspace, ignore_errors=True)
            raise ServeError(f"Triton did not start ({type(exc).__name__}: {exc}); its log is above") from None
        self.triton = triton

    def serve_until(self, stop: threading.Event, poll_s: float = 1.0) -> bool:
        """Serve until `stop` is set (True) or Triton dies (False)."""
        while not stop.wait(poll_s):
            if not self.triton.is_alive():
                return False
        return True

    def stop(self) -> None:
        """End Triton: it waits for the requests in flight (up to exit_timeout_s) and unloads the model."""
        if self.triton is not None:
            self.triton.stop()
            self.triton = None
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
        self.backend.close()
