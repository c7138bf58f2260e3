"""The Triton client backend: a bundle's engine served by Triton Inference Server, scored on the edge.

`--engine triton://HOST[:PORT]/MODEL` (Detector's `engine=`): the preprocessed
batch goes to the server over Triton's gRPC protocol, the graph's raw outputs
come back, and everything else stays here: the text prototypes, the few-shot
memory of a line profile, thresholds and maps. The server is `winclip-serve`
or NVIDIA's own server on a repository `--write-repo` made.

Identity: a served model's version carries its engine's sha256
(`winclip.runtime.served`). The client runs only when the served version is
one of its bundle's engines (and the precision asked for, if one was): a
server of another bundle is refused in one line.

Reach, by the rules a camera follows (runtime/defaults.py): at start a server
that cannot be reached is tried OPEN_ATTEMPTS times with backoff, or for as
long as it takes with `wait` (--wait-for-source). A request that fails
mid-run raises EngineUnavailable, so the frames of that batch become error
events; the next call waits out the backoff, opens a fresh channel, checks the
identity again (a restarted server may serve something else) and goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.contract import Engine, Manifest
from winclip.runtime.defaults import BACKOFF_S, OPEN_ATTEMPTS, SERVED_TIMEOUT_S, next_wait
from winclip.runtime.errors import BundleError, EngineUnavailable, MissingExtra, first_line, install_hint
from winclip.runtime.served import ENGINE_SHA256_PARAMETER, ServedAddress, served_version

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient


def _grpc():
    """tritonclient's gRPC module, imported when a served engine is opened: every runtime module (and the
    identity check below) imports without the triton-client extra."""
    try:
        import tritonclient.grpc as grpc_module
    except ImportError as exc:
        raise MissingExtra(f"the triton backend needs {exc.name}: {install_hint('triton-client')}") from None
    return grpc_module


def _server_error() -> type[BaseException]:
    """Triton's own exception class (tritonclient is installed once a client exists)."""
    from tritonclient.utils import InferenceServerException

    return InferenceServerException


DATATYPE = "FP32"  # the graph's input and outputs, as Triton names float32


@dataclass(frozen=True)
class ServedModel:
    """What the server says about the model: its versions, batch limit, full sha256 (when its config has one)."""

    versions: tuple[int, ...]
    max_batch: int
    sha256: str | None
    server: str  # "triton 2.61.0"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _server_error()):
        text = exc.message() or str(exc)
        status = exc.status()
        return first_line(f"{text} ({status})" if status and status not in text else text)
    return first_line(exc)


def _dims(shape) -> list:
    return [int(d) for d in shape]


def check_signature(address: ServedAddress, manifest: Manifest, metadata: dict) -> None:
    """The served model's inputs and outputs must be the bundle's, name for name and dimension for dimension."""

    def compare(kind: str, want: dict[str, list], got: list[dict]) -> None:
        got_map = {t["name"]: t for t in got}
        if sorted(want) != sorted(got_map):
            raise BundleError(f"{address} has {kind} {sorted(got_map)}; this bundle's engine has {sorted(want)}")
        for name, shape in want.items():
            served = got_map[name]
            expected = [-1, *shape[1:]]
            if served.get("datatype") != DATATYPE or _dims(served.get("shape", [])) != expected:
                raise BundleError(f"{address}: {kind[:-1]} {name} is {served.get('datatype')} "
                                  f"{_dims(served.get('shape', []))}; this bundle's engine has {DATATYPE} {expected}")

    compare("inputs", manifest.input_shapes(), metadata.get("inputs", []))
    compare("outputs", manifest.output_shapes(), metadata.get("outputs", []))


def choose_served_engine(address: ServedAddress, manifest: Manifest, served: ServedModel,
                         precision: str) -> tuple[Engine, str]:
    """The bundle's engine the server serves, and why; BundleError when it serves none of them."""
    ours = {served_version(e.sha256): e for e in manifest.engines}
    matches = [ours[v] for v in served.versions if v in ours]
    if served.sha256 is not None:
        matches = [e for e in matches if e.sha256 == served.sha256]
    if not matches:
        have = ", ".join(f"{e.precision} {served_version(e.sha256)}" for e in manifest.engines)
        versions = ", ".join(map(str, served.versions)) or "none"
        raise BundleError(f"{address} serves version {versions}, which is no engine of this bundle "
                          f"(it has: {have}): the server runs another bundle's engine")
    if precision == "auto":
        engine = matches[0]
        return engine, f"served as {address.model} version {served_version(engine.sha256)}"
    for engine in matches:
        if engine.precision == precision:
            return engine, f"asked for, served as {address.model} version {served_version(engine.sha256)}"
    raise BundleError(f"{address} serves this bundle's {matches[0].precision} engine, not the {precision} "
                      "engine asked for")


def connect(address: ServedAddress, manifest: Manifest) -> tuple[grpcclient.InferenceServerClient, ServedModel]:
    """A fresh channel to a server whose model is ready, and what it serves; EngineUnavailable if it cannot be had.

    The signature check raises BundleError: a server that answers with another
    model is not one to wait for.
    """
    client = _grpc().InferenceServerClient(address.target)
    try:
        try:
            if not client.is_server_live():
                raise EngineUnavailable(f"{address}: the server is not live")
            if not client.is_model_ready(address.model):
                raise EngineUnavailable(f"{address}: no model {address.model!r} is ready there")
            server = client.get_server_metadata(as_json=True)
            metadata = client.get_model_metadata(address.model, as_json=True)
            config = client.get_model_config(address.model, as_json=True).get("config", {})
        except _server_error() as exc:
            raise EngineUnavailable(f"{address}: {_reason(exc)}") from None
        check_signature(address, manifest, metadata)
        max_batch = int(config.get("max_batch_size", 0))
        if max_batch < 1:
            raise BundleError(f"{address} serves {address.model} without a batch axis (max_batch_size 0)")
        sha = config.get("parameters", {}).get(ENGINE_SHA256_PARAMETER, {}).get("string_value")
        versions = tuple(sorted(int(v) for v in metadata.get("versions", []) if str(v).isdigit()))
        who = f"{server.get('name', 'triton')} {server.get('version', '')}".strip()
        return client, ServedModel(versions, max_batch, sha, who)
    except BaseException:
        client.close()
        raise


class TritonBackend(Backend):
    """A served engine on a Triton server, reached over gRPC; reconnects with backoff when the server goes away."""

    name = "triton"

    def __init__(self, address: ServedAddress, manifest: Manifest, engine: Engine, reason: str,
                 client: grpcclient.InferenceServerClient, served: ServedModel):
        super().__init__(engine, reason)
        self.address = address
        self.manifest = manifest
        self.served = served
        self.model_version = str(served_version(engine.sha256))
        self.input_name = manifest.input_name
        self.output_names = list(manifest.output_names)
        self._grpc = _grpc()
        self._requested = [self._grpc.InferRequestedOutput(n) for n in self.output_names]
        self._client: grpcclient.InferenceServerClient | None = client
        self._lock = threading.Lock()
        self._delay = BACKOFF_S[0]
        self._next_try = 0.0
        self._down_since: float | None = None

    @classmethod
    def open(cls, bundle, options: BackendOptions) -> "TritonBackend":
        if not options.endpoint:
            raise BundleError("the triton backend needs a served engine's address: --engine triton://HOST:PORT/MODEL")
        address = ServedAddress.parse(options.endpoint)
        attempts, delay = 0, BACKOFF_S[0]
        while True:
            try:
                client, served = connect(address, bundle.manifest)
                break
            except EngineUnavailable as exc:
                attempts += 1
                if not options.wait and attempts >= OPEN_ATTEMPTS:
                    raise EngineUnavailable(f"cannot reach the served engine after {attempts} attempts: {exc}; "
                                            "--wait-for-source keeps trying") from None
                log.warning("%s; next try in %.1f s", exc, delay)
                time.sleep(delay)
                delay = next_wait(delay)
        try:
            engine, reason = choose_served_engine(address, bundle.manifest, served, options.precision)
        except BaseException:
            client.close()
            raise
        return cls(address, bundle.manifest, engine, reason, client, served)

    @property
    def device(self) -> str:
        return f"Triton at {self.address.target}"

    def version(self) -> str:
        return f"{self.served.server} {self.address} version {self.model_version}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            if self._client is None:
                self._reconnect()
            try:
                return self._infer(batch)
            except _server_error() as exc:
                reason = _reason(exc)
            self._lost(reason)
            raise EngineUnavailable(f"served engine {self.address} lost: {reason}; "
                                    f"reconnecting (next try in {self._delay:.1f} s)")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- requests
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One request per server-sized chunk of the batch, outputs joined in order."""
        step = self.served.max_batch
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start:start + step], dtype=np.float32)
            request = self._grpc.InferInput(self.input_name, list(chunk.shape), DATATYPE)
            request.set_data_from_numpy(chunk)
            result = self._client.infer(self.address.model, [request], model_version=self.model_version,
                                        outputs=self._requested, client_timeout=SERVED_TIMEOUT_S)
            for name in self.output_names:
                array = result.as_numpy(name)
                if array is None:
                    raise BundleError(f"{self.address} answered without the output {name}")
                parts[name].append(np.array(array, dtype=np.float32))  # a copy: the response buffer is read-only
        return {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in parts.items()}

    # --- losing and finding the server
    def _lost(self, reason: str) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("served engine %s lost: %s; reconnecting with backoff", self.address, reason)
        self._next_try = now + self._delay

    def _reconnect(self) -> None:
        """Wait for the next try, then a fresh channel to the same engine; EngineUnavailable until it is back."""
        wait = self._next_try - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            client, served = connect(self.address, self.manifest)
            try:
                engine, _ = choose_served_engine(self.address, self.manifest, served, self.engine.precision)
                if engine.sha256 != self.engine.sha256:
                    raise BundleError(f"{self.address} now serves another engine ({engine.precision})")
            except BaseException:
                client.close()
                raise
        except (EngineUnavailable, BundleError) as exc:
            self._delay = next_wait(self._delay)
            self._next_try = time.monotonic() + self._delay
            raise EngineUnavailable(f"served engine still away: {exc}; next try in {self._delay:.1f} s") from None
        down = time.monotonic() - (self._down_since or time.monotonic())
        log.info("served engine %s is back after %.1f s", self.address, down)
        self._client, self.served = client, served
        self._delay, self._down_since = BACKOFF_S[0], None
