"""The OpenVINO backend: a bundle's ONNX graphs or its OpenVINO IR engines, on CPU (GPU, NPU pass through).

Like every backend it builds the model from the engine's checked bytes, never
from a path: an IR's .xml and .bin are each read and hashed by the bundle and
handed to OpenVINO from memory. An IR is refused before OpenVINO parses it when
it declares XML entities or names layers outside OpenVINO's standard opsets (a
custom-op extension, which would need a library of code); an ONNX graph that
points at external data is refused as on ONNX Runtime. Compiled blobs go to the
user's cache (OpenVINO's CACHE_DIR, one folder per OpenVINO version, so a blob
another version wrote is never offered to this one; folders of other versions
are removed), never into the bundle.

OpenVINO's CPU plugin computes in bf16 by default on CPUs that have it; an
engine here runs at the compute precision its guard measured: bf16 where the
guard record says so ("compute": "bf16") and this CPU has bf16 arithmetic, f32
otherwise (closer to the fp32 reference, never further). `inference_precision`
forces either; the fp32 graph has no guard and runs f32 unless asked.
"""

from __future__ import annotations

import re
import shutil
import threading
import xml.etree.ElementTree as ElementTree

import numpy as np
import openvino as ov

from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.backends.policy import choose_engine
from winclip.runtime.cache import cache_path
from winclip.runtime.contract import FORMAT_ONNX, FORMAT_OPENVINO_IR, Engine, Manifest
from winclip.runtime.errors import BundleError, first_line
from winclip.runtime.graph_check import require_inline_weights


# our device words -> OpenVINO's; any other name passes through upper-cased (GPU, GPU.1, NPU, AUTO:GPU,CPU)
DEVICE_ALIASES = {"auto": "CPU", "cpu": "CPU"}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")  # OpenVINO's own schedulers over real devices
INFERENCE_PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
STANDARD_OPSET = re.compile(r"opset\d+")


def resolve_device(core: ov.Core, device: str) -> str:
    """OpenVINO's name for --device; BundleError naming the devices this OpenVINO has when it has no such one."""
    if device == "cuda":
        raise BundleError("OpenVINO does not drive CUDA: use --backend onnxruntime for CUDA, or one of this "
                          f"OpenVINO's devices: {', '.join(core.available_devices) or 'none'}")
    name = DEVICE_ALIASES.get(device, device.upper())
    available = core.available_devices  # "CPU", "GPU.0", "NPU", ...
    if name.split(":")[0] in VIRTUAL_DEVICES or name in available or any(d.split(".")[0] == name for d in available):
        return name
    raise BundleError(f"OpenVINO has no device {device!r} here; it has: {', '.join(available) or 'none'}")


def check_ir(xml: bytes, name: str) -> None:
    """Refuse an IR that is not plain OpenVINO: XML entities, or layers of a custom-op extension."""
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise BundleError(f"{name} declares XML entities; an OpenVINO IR has none")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise BundleError(f"{name} is not a well-formed OpenVINO IR: {exc}") from None
    if root.tag != "net":
        raise BundleError(f"{name} is not an OpenVINO IR (its root element is <{root.tag[:40]}>, not <net>)")
    for layer in root.iter("layer"):
        version = layer.get("version", "")
        if not STANDARD_OPSET.fullmatch(version):
            raise BundleError(f"{name} uses a custom operation: layer {layer.get('name', '?')[:80]!r} of type "
                              f"{layer.get('type', '?')[:40]!r} comes from {version[:40]!r}, not a standard "
                              "OpenVINO opset; a bundle's engines run with OpenVINO's own operations only")


def compiled_cache_dir(options: BackendOptions) -> str | None:
    """This OpenVINO version's folder of compiled blobs in the user's cache; folders of other versions are removed."""
    if not options.cache:
        return None
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", ov.__version__.split("-")[0])
    folder = cache_path(f"openvino-{tag}", options.cache_dir)
    if folder is None:
        return None
    for stale in folder.parent.glob("openvino-*"):
        if stale != folder and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)  # another OpenVINO's blobs: never loaded, only in the way
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return str(folder)


class OpenVinoBackend(Backend):
    """An OpenVINO compiled model over one checked engine (IR or ONNX)."""

    name = "openvino"
    formats = (FORMAT_OPENVINO_IR, FORMAT_ONNX)

    def __init__(self, compiled: ov.CompiledModel, engine: Engine, reason: str, device: str, loaded_from_cache: bool):
        super().__init__(engine, reason)
        self.compiled = compiled
        self.device_name = device
        self.loaded_from_cache = loaded_from_cache  # the compiled blob came from the user's cache
        self.request = compiled.create_infer_request()
        # One request serves every thread (a second would hold a second set of intermediate buffers): the live loop,
        # a teach preview on the page's thread and the desk's worker all call run(). A request is not re-entrant and
        # its output tensors are overwritten by the next infer, so infer and copy-out happen under one lock.
        self._request_lock = threading.Lock()
        self.outputs = [(port.get_any_name(), port) for port in compiled.outputs]

    @classmethod
    def open(cls, bundle, options: BackendOptions) -> "OpenVinoBackend":
        core = ov.Core()
        device = resolve_device(core, options.device)
        kind = "cpu" if device == "CPU" else "accelerator"
        engine, reason = choose_engine(bundle.manifest, options.precision, kind, cls.formats, options.engine_sha256)
        model, sha256 = bundle.read_engine(engine)
        weights = bundle.read_weights(engine)
        backend = cls.from_bytes(model, engine, bundle.manifest, options, weights=weights, reason=reason,
                                 core=core, device=device)
        del model, weights, sha256
        return backend

    @classmethod
    def from_bytes(cls, model: bytes, engine: Engine, manifest: Manifest, options: BackendOptions = BackendOptions(),
                   *, weights: bytes | None = None, reason: str = "", core: ov.Core | None = None,
                   device: str | None = None) -> "OpenVinoBackend":
        """A backend over an engine's bytes (an IR's .xml with its .bin weights, or an ONNX graph)."""
        core = core or ov.Core()
        device = device or resolve_device(core, options.device)
        if engine.format == FORMAT_OPENVINO_IR:
            if weights is None:
                raise BundleError(f"{engine.file}: an OpenVINO IR needs its weights file")
            check_ir(model, engine.file)
            read = lambda: core.read_model(model=model, weights=ov.Tensor(np.frombuffer(weights, np.uint8)))  # noqa: E731
        else:
            require_inline_weights(model, engine.file)
            read = lambda: core.read_model(model=model)  # noqa: E731
        try:
            ov_model = read()
        except Exception as exc:
            raise BundleError(f"OpenVINO cannot read {engine.file}: {first_line(exc)}") from None
        check_model_io(manifest, ov_model, engine.file)
        config = {}
        hint = options.inference_precision
        if hint is not None and hint not in INFERENCE_PRECISIONS:
            raise BundleError(f"unknown inference precision {hint!r}; use one of {', '.join(INFERENCE_PRECISIONS)}")
        said = ""
        if device == "CPU":
            has_bf16 = cpu_computes_bf16(core)
            if hint is None:
                guarded = guarded_compute(engine)
                hint = guarded if has_bf16 else "f32"
                said = ", as guarded" if guarded == hint else ""
            hint = INFERENCE_PRECISIONS[hint]
            if hint == "bf16" and not has_bf16:
                raise BundleError("bf16 inference was asked for, but this CPU has no bf16 arithmetic "
                                  "(AVX512-BF16 or AMX); use f32")
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = INFERENCE_PRECISIONS[hint]
            what = f"{INFERENCE_PRECISIONS[hint]} compute{said}"
            reason = f"{reason}; {what}" if reason else what
        config["PERFORMANCE_HINT"] = "LATENCY"
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        cache_dir = compiled_cache_dir(options)
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": cache_dir})
        try:
            compiled = core.compile_model(ov_model, device, config)
        except Exception as exc:
            raise BundleError(f"OpenVINO cannot compile {engine.file} for {device}: {first_line(exc)}") from None
        try:
            from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # not every device plugin reports it
            from_cache = False
        return cls(compiled, engine, reason, device, from_cache)

    @property
    def device(self) -> str:
        return self.device_name

    def version(self) -> str:
        return f"openvino {ov.__version__} {self.device_name}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._request_lock:
            results = self.request.infer({0: batch})
            return {name: np.array(results[port]) for name, port in self.outputs}

    def close(self) -> None:
        self.request = None
        self.compiled = None


def guarded_compute(engine: Engine) -> str:
    """The compute precision an engine's accuracy guard ran it at: "bf16" or "f32" (also for an engine
    without a guard record, or one guarded before the record named it)."""
    record = engine.guard or {}
    return "bf16" if record.get("compute") == "bf16" and record.get("passed") else "f32"


def cpu_computes_bf16(core: ov.Core | None = None) -> bool:
    """Whether OpenVINO's CPU plugin has bf16 arithmetic here (AVX512-BF16 or AMX)."""
    return "BF16" in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_model_io(manifest: Manifest, model: ov.Model, name: str) -> None:
    """The manifest and the model must agree on names and every static dimension."""

    def shape(port) -> list:
        return [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]

    for kind, want, ports in (("inputs", manifest.input_shapes(), model.inputs),
                              ("outputs", manifest.output_shapes(), model.outputs)):
        got = {port.get_any_name(): shape(port) for port in ports}
        if list(want) != list(got):
            raise BundleError(f"{name}: the manifest's {kind} {list(want)} disagree with the model's {list(got)}")
        for key, dims in want.items():
            actual = got[key]
            if len(dims) != len(actual) or any(not isinstance(w, str) and w != a for w, a in zip(dims, actual)):
                raise BundleError(f"{name}: the manifest says {key} is {dims}, the model says {actual}")
