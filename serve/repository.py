"""A standard Triton model repository of a bundle's engine, for NVIDIA's own server images.

    DIR/<model>/config.pbtxt          platform onnxruntime_onnx, max_batch_size, dynamic batching,
                                      the instance group, an optional accelerator, the engine's sha256
    DIR/<model>/<version>/model.onnx  the engine's checked bytes; <version> carries its sha256
    DIR/<model>/bundle/               the bundle's manifest.json and text prototypes (Triton ignores a
                                      folder whose name is not a number): what is served, and what the
                                      edge clients score with

The graph is served as it is, by Triton's own onnxruntime backend (with
TensorRT or OpenVINO as its accelerator where the target says so), so the
edge clients of `--engine triton://...` work against it unchanged. The
PyTriton wheel that `winclip-serve` runs has no onnxruntime backend: this
repository is written and checked here, never served here.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from winclip.runtime.atomic import write_atomic
from winclip.runtime.backends import BackendOptions
from winclip.runtime.backends.policy import choose_engine
from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import MANIFEST_NAME, Engine
from winclip.runtime.defaults import SERVED_MODEL_NAME
from winclip.runtime.errors import BundleError
from winclip.runtime.served import ENGINE_SHA256_PARAMETER, check_model_name, served_version
from winclip.serve import defaults

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
GRAPH_FILE = "model.onnx"
BUNDLE_FOLDER = "bundle"
# onnxruntime's element types -> Triton's
DATA_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@dataclass(frozen=True)
class Target:
    """Where NVIDIA's server runs the engine: the device the auto precision is chosen for, the instance
    kind, and the execution accelerator of Triton's onnxruntime backend (None: its plain provider)."""

    device_kind: str  # "cuda" | "cpu", a device kind of runtime/defaults.py PRECISIONS
    instance_kind: str  # KIND_GPU | KIND_CPU
    accelerator: str | None = None  # "tensorrt" (a GPU accelerator) | "openvino" (a CPU accelerator)
    parameters: dict = field(default_factory=dict)


TARGETS: dict[str, Target] = {
    "gpu": Target("cuda", "KIND_GPU"),
    "gpu-tensorrt": Target("cuda", "KIND_GPU", "tensorrt"),
    "cpu": Target("cpu", "KIND_CPU"),
    "cpu-openvino": Target("cpu", "KIND_CPU", "openvino"),
}
DEFAULT_TARGET = "gpu"


@dataclass(frozen=True)
class RepositoryOptions:
    """Which engine, under which name, batched how, for which target."""

    precision: str = "auto"
    model_name: str = SERVED_MODEL_NAME
    max_batch: int = defaults.MAX_BATCH
    max_queue_delay_us: int = defaults.MAX_QUEUE_DELAY_US
    dynamic_batching: bool = True
    instances: int = defaults.INSTANCES
    target: str = DEFAULT_TARGET


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _graph_types(graph: bytes, engine: Engine, manifest) -> dict[str, str]:
    """Triton data types of the graph's inputs and outputs, read by onnxruntime (which also checks them
    against the manifest's names and shapes)."""
    from winclip.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend.from_bytes(graph, engine, manifest, BackendOptions(device="cpu", cache=False))
    types = {}
    for node in [*backend.session.get_inputs(), *backend.session.get_outputs()]:
        if node.type not in DATA_TYPES:
            raise BundleError(f"{engine.file}: {node.name} is {node.type}; a Triton repository takes "
                              f"{', '.join(DATA_TYPES)}")
        types[node.name] = DATA_TYPES[node.type]
    return types


def model_config(manifest, engine: Engine, types: dict[str, str], options: RepositoryOptions) -> str:
    """config.pbtxt for the engine: every field from the manifest (checked against the graph) and the options."""
    target = TARGETS[options.target]
    lines = [f"name: {_quote(options.model_name)}", f"platform: {_quote(PLATFORM)}",
             f"max_batch_size: {options.max_batch}",
             f"version_policy: {{ specific: {{ versions: [ {served_version(engine.sha256)} ] }} }}"]
    for kind, shapes in (("input", manifest.input_shapes()), ("output", manifest.output_shapes())):
        for name, shape in shapes.items():
            dims = ", ".join(str(int(d)) for d in shape[1:])  # the batch axis is Triton's, not listed
            lines.append(f"{kind} {{ name: {_quote(name)} data_type: {types[name]} dims: [ {dims} ] }}")
    if options.dynamic_batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}")
    lines.append(f"instance_group [ {{ count: {options.instances} kind: {target.instance_kind} }} ]")
    if target.accelerator is not None:
        where = "gpu" if target.instance_kind == "KIND_GPU" else "cpu"
        params = dict(target.parameters)
        if target.accelerator == "tensorrt":
            params.setdefault("precision_mode", "FP16" if engine.precision == "fp16" else "FP32")
        body = " ".join(f"parameters {{ key: {_quote(k)} value: {_quote(str(v))} }}" for k, v in params.items())
        lines.append(f"optimization {{ execution_accelerators {{ {where}_execution_accelerator: "
                     f"[ {{ name: {_quote(target.accelerator)}{' ' + body if body else ''} }} ] }} }}")
    lines.append(f"parameters {{ key: {_quote(ENGINE_SHA256_PARAMETER)} "
                 f"value: {{ string_value: {_quote(engine.sha256)} }} }}")
    return "\n".join(lines) + "\n"


def write_repository(bundle_path: str | Path, repo: str | Path, options: RepositoryOptions = RepositoryOptions()
                     ) -> Path:
    """Write REPO/<model>/ for the bundle's chosen engine; the model folder. BundleError when it cannot."""
    if options.target not in TARGETS:
        raise BundleError(f"unknown Triton target {options.target!r}; use one of {', '.join(TARGETS)}")
    check_model_name(options.model_name)
    bundle = Bundle.load(bundle_path)
    engine, reason = choose_engine(bundle.manifest, options.precision, TARGETS[options.target].device_kind)
    graph, _ = bundle.read_engine(engine)
    types = _graph_types(graph, engine, bundle.manifest)
    repo = Path(repo)
    final = repo / options.model_name
    if final.exists():
        raise BundleError(f"{final} exists: remove it first (a model repository is written whole)")
    repo.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{options.model_name}-", dir=repo))
    try:
        version = work / str(served_version(engine.sha256))
        version.mkdir()
        write_atomic(version / GRAPH_FILE, graph)
        write_atomic(work / "config.pbtxt", model_config(bundle.manifest, engine, types, options).encode())
        beside = work / BUNDLE_FOLDER
        beside.mkdir()
        shutil.copyfile(bundle.root / MANIFEST_NAME, beside / MANIFEST_NAME)
        for ref in bundle.manifest.objects.values():
            (beside / ref.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.root / ref.file, beside / ref.file)
        work.chmod(0o755)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("Triton model repository: %s (%s engine, %s; version %d)", final, engine.precision, reason,
             served_version(engine.sha256))
    return final
