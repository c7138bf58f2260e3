"""The engine-bundle contract: names, the typed manifest, and its JSON form.

The one home of the bundle schema. `winclip-export` builds a `Manifest` and
writes `to_json()`; the runtime reads it back with `Manifest.from_json()`, which
checks every field's type and range and every derived fact (window counts, the
graph's input and output shapes) against the geometry that produced it. Pure
data: no file system access here (see bundle.py), no torch.

Schema history: version 1 had one hard-wired graph ("graph" + a "files" table);
version 2 lists engines (file, precision, sha256, how it was made, the checks
that admitted it) and puts each file's checksum beside its name; version 3 adds
an engine's format ("onnx", or "openvino-ir" with its .bin weights as a second
checksummed file) and holds one engine per format and precision. A manifest is
written with the lowest version that holds it (2 while every engine is ONNX, so
older runtimes still read such bundles; 3 once an IR is added, so they refuse
it by its version instead of misreading it). Version-1 manifests are read
through `upgrade_v1`; version-2 engines are ONNX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from winclip.runtime.defaults import PRECISIONS
from winclip.runtime.errors import SettingError, short_repr
from winclip.runtime.geometry import uncovered_patches, window_count
from winclip.runtime.validation import Node, SchemaError, plain_file_name

SCHEMA_VERSION = 3  # the newest this writes; see Manifest.schema_version
READABLE_VERSIONS = (1, 2, 3)
BUNDLE_FORMAT = "winclip-edge-bundle"
MANIFEST_NAME = "manifest.json"
FP32_ENGINE_FILE = "visual.onnx"
TEXT_DIR = "text"

INPUT_NAME = "images"
IMAGE_EMBEDDING = "image_embedding"
PATCH_FEATURES = "patch_features"
BATCH_AXIS = "batch"

# preprocessing policies this runtime implements
RESIZE_SQUASH = "squash"
INTERPOLATION_BICUBIC = "bicubic"
CHANNELS_RGB = "RGB"



@dataclass(frozen=True)
class EngineFormat:
    """What the bundle must know of an engine format: how its files are named and which schema holds it.

    A new format (a TensorRT plan, say) is one row of ENGINE_FORMATS; the backends that run it say so in
    their `formats`. Nothing else here branches on a format's name."""

    suffix: str  # the engine file's suffix
    side_file: str | None = None  # the suffix of a second checksummed file it needs (an IR's .bin weights)
    tag: str = ""  # in a derived engine's file name, after the precision: visual-int8-openvino.xml
    schema_version: int = 2  # the lowest bundle schema that can list it (older runtimes refuse it by version)


FORMAT_ONNX = "onnx"
FORMAT_OPENVINO_IR = "openvino-ir"
ENGINE_FORMATS: dict[str, EngineFormat] = {
    FORMAT_ONNX: EngineFormat(".onnx"),  # an ONNX graph, its weights inline
    FORMAT_OPENVINO_IR: EngineFormat(".xml", side_file=".bin", tag="-openvino", schema_version=3),
}
# every format's engine suffix and the side files' suffixes, for code that names or finds engine files
ENGINE_SUFFIX = {name: f.suffix for name, f in ENGINE_FORMATS.items()}
SIDE_FILE_SUFFIXES = tuple(sorted({f.side_file for f in ENGINE_FORMATS.values() if f.side_file}))
WEIGHTS_SUFFIX = ENGINE_FORMATS[FORMAT_OPENVINO_IR].side_file  # an IR's weights (kept for the IR's builder)

MAX_OBJECTS = 4096
MAX_ENGINES = 8


def window_output_name(scale: int) -> str:
    return f"window_embeddings_{scale}"


def output_names(scales) -> list[str]:
    """Graph outputs in order: image embedding, windows per scale, patch features."""
    return [IMAGE_EMBEDDING, *[window_output_name(k) for k in scales], PATCH_FEATURES]


def normalize_object_name(name: str) -> str:
    """The user's words for the object; dataset folder names use '_' for spaces. SettingError when empty."""
    cleaned = " ".join(str(name).replace("_", " ").split())
    if not cleaned:
        raise SettingError(f"the object name is empty (got {short_repr(name)}): name the part, e.g. 'bottle'")
    return cleaned


def text_file_name(object_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", object_name.lower()).strip("-")[:100] or "object"
    return f"{TEXT_DIR}/{slug}.npy"


def engine_file_name(precision: str, engine_format: str = FORMAT_ONNX) -> str:
    if precision == "fp32" and engine_format == FORMAT_ONNX:
        return FP32_ENGINE_FILE  # the export's graph: the one name every schema version has used
    kind = ENGINE_FORMATS[engine_format]
    return f"visual-{precision}{kind.tag}{kind.suffix}"


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle and the sha256 it must have."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Preprocess:
    """How frames become the graph's input: size, resize policy, channel order, normalisation."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = RESIZE_SQUASH
    interpolation: str = INTERPOLATION_BICUBIC
    antialias: bool = True
    channel_order: str = CHANNELS_RGB


@dataclass(frozen=True)
class Engine:
    """One engine of the bundle (an ONNX graph or an OpenVINO IR); every engine has the same inputs and outputs."""

    file: str
    precision: str
    sha256: str
    made_by: dict  # tool, method, settings, source engine, versions, the CPU it was made on, time
    verification: dict | None = None  # ONNX vs torch, for graphs written by the export
    guard: dict | None = None  # accuracy vs the fp32 engine, for derived engines
    accepted_degraded: bool = False  # added although its guard failed (--accept-degraded)
    format: str = FORMAT_ONNX  # a key of ENGINE_FORMATS
    weights: FileRef | None = None  # the format's side file (an IR's .bin), checksummed like the first

    @property
    def key(self) -> tuple[str, str]:
        """What is unique among a bundle's engines: (format, precision)."""
        return self.format, self.precision

    @property
    def label(self) -> str:
        """For people: "int8", or "int8 openvino-ir" for a format other than ONNX."""
        return self.precision if self.format == FORMAT_ONNX else f"{self.precision} {self.format}"

    def files(self) -> list[FileRef]:
        """The engine's files with their checksums: the graph, and an IR's weights."""
        return [FileRef(self.file, self.sha256), *([self.weights] if self.weights else [])]

    def to_json(self) -> dict:
        out = {"file": self.file, "precision": self.precision, "sha256": self.sha256, "made_by": self.made_by}
        if self.format != FORMAT_ONNX:
            out["format"] = self.format
        if self.weights is not None:
            out["weights"] = {"file": self.weights.file, "sha256": self.weights.sha256}
        if self.verification is not None:
            out["verification"] = self.verification
        if self.guard is not None:
            out["guard"] = self.guard
        out["accepted_degraded"] = self.accepted_degraded
        return out


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to know about a bundle, checked on construction."""

    backbone: dict  # name, open_clip_model, weights (tag, file or none, with sha256)
    preprocess: Preprocess
    patch_size: tuple[int, int]
    grid: tuple[int, int]
    scales: tuple[int, ...]
    stride: int
    embed_dim: int
    width: int
    layers: int
    mlp_width: int
    work_elimination: bool  # windows reuse the first block's QKV and run their last block for the class token
    patch_layer: int
    patch_ln_post: bool
    engines: tuple[Engine, ...]
    objects: dict[str, FileRef]  # normalised object name -> its (2, D) text prototypes
    text_ensemble: str
    prompts: dict  # normal_states, anomalous_states, templates: as exported, for the record
    temperature: float
    versions: dict = field(default_factory=dict)
    created: str = ""

    def __post_init__(self):
        self.check()

    # ---- derived facts (never stored twice: the JSON copies are checked against these)
    @property
    def output_names(self) -> list[str]:
        return output_names(self.scales)

    @property
    def input_name(self) -> str:
        return INPUT_NAME

    @property
    def window_counts(self) -> dict[int, int]:
        return {k: window_count(self.grid, k, self.stride) for k in self.scales}

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def input_shapes(self) -> dict[str, list]:
        return {INPUT_NAME: [BATCH_AXIS, 3, *self.preprocess.input_size]}

    def output_shapes(self) -> dict[str, list]:
        shapes = {IMAGE_EMBEDDING: [BATCH_AXIS, self.embed_dim]}
        for k, n in self.window_counts.items():
            shapes[window_output_name(k)] = [BATCH_AXIS, n, self.embed_dim]
        shapes[PATCH_FEATURES] = [BATCH_AXIS, self.n_patches, self.width]
        return shapes

    @property
    def precisions(self) -> list[str]:
        """The precisions the bundle has engines for, each once."""
        return list(dict.fromkeys(e.precision for e in self.engines))

    @property
    def labels(self) -> list[str]:
        """Every engine for people ("fp32", "int8", "int8 openvino-ir")."""
        return [e.label for e in self.engines]

    @property
    def schema_version(self) -> int:
        """The lowest schema version that holds this manifest (see the module's history)."""
        return max(ENGINE_FORMATS[e.format].schema_version for e in self.engines) if self.engines else 2

    def engine(self, precision: str, engine_format: str = FORMAT_ONNX) -> Engine:
        for e in self.engines:
            if e.key == (engine_format, precision):
                return e
        raise KeyError(precision)

    def with_engine(self, engine: Engine) -> "Manifest":
        """A copy with `engine` added, or replacing the engine of the same format and precision."""
        kept = tuple(e for e in self.engines if e.key != engine.key)
        return replace(self, engines=(*kept, engine))

    def files(self) -> list[FileRef]:
        """Every file the manifest names, with its checksum."""
        return [*(ref for e in self.engines for ref in e.files()), *self.objects.values()]

    # ---- checks that hold for every manifest, however it was made
    def check(self) -> None:
        gh, gw = self.grid
        for i, axis in enumerate(("height", "width")):
            if self.preprocess.input_size[i] // self.patch_size[i] != self.grid[i]:
                raise SchemaError(f"grid {list(self.grid)} does not follow from input size "
                                  f"{list(self.preprocess.input_size)} and patch size {list(self.patch_size)} ({axis})")
        if len(set(self.scales)) != len(self.scales):
            raise SchemaError(f"field windows.scales {list(self.scales)} repeats a scale")
        for k in self.scales:
            if k > min(gh, gw):
                raise SchemaError(f"window scale {k} does not fit the {gh}x{gw} patch grid")
            if uncovered_patches(self.grid, k, self.stride):
                raise SchemaError(f"scale-{k} windows at stride {self.stride} leave patches of the grid uncovered")
        if not 1 <= self.patch_layer <= self.layers:
            raise SchemaError(f"field patch_features.layer is {self.patch_layer}, outside 1..{self.layers}")
        if not self.engines:
            raise SchemaError("the manifest lists no engines")
        keys = [e.key for e in self.engines]
        if len(set(keys)) != len(keys):
            raise SchemaError(f"field engines lists a precision twice: {self.labels}")
        for e in self.engines:
            side_file = ENGINE_FORMATS[e.format].side_file
            if (e.weights is None) != (side_file is None):
                raise SchemaError(f"engine {e.file}: an {e.format} engine "
                                  + ("holds its weights inline, it names no weights file" if side_file is None
                                     else f"needs its weights file ({side_file}, field weights)"))
        names = [f.file for f in self.files()]
        if len(set(names)) != len(names):
            raise SchemaError("two manifest entries name the same file")
        if not self.objects:
            raise SchemaError("the manifest holds text embeddings for no object")

    # ---- JSON
    def to_json(self) -> dict:
        p = self.preprocess
        return {
            "format": BUNDLE_FORMAT,
            "schema_version": self.schema_version,
            "created": self.created,
            "backbone": self.backbone,
            "preprocess": {"input_size": list(p.input_size), "resize": p.resize, "interpolation": p.interpolation,
                           "antialias": p.antialias, "channel_order": p.channel_order,
                           "mean": list(p.mean), "std": list(p.std)},
            "patch_size": list(self.patch_size),
            "grid": list(self.grid),
            "windows": {"scales": list(self.scales), "stride": self.stride,
                        "counts": {str(k): n for k, n in self.window_counts.items()},
                        "work_elimination": self.work_elimination},
            "dims": {"embed": self.embed_dim, "width": self.width, "layers": self.layers, "mlp": self.mlp_width},
            "patch_features": {"layer": self.patch_layer, "ln_post": self.patch_ln_post},
            "io": {"inputs": self.input_shapes(), "outputs": self.output_shapes()},
            "engines": [e.to_json() for e in self.engines],
            "text": {"ensemble": self.text_ensemble, **self.prompts,
                     "objects": {name: {"file": ref.file, "sha256": ref.sha256} for name, ref in self.objects.items()}},
            "scoring": {"temperature": self.temperature},
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, data: object) -> "Manifest":
        """Read and check a manifest of any readable schema version; SchemaError names the field."""
        root = Node(data, "")
        if root.raw("format", None) != BUNDLE_FORMAT:
            raise SchemaError(f"not a {BUNDLE_FORMAT} manifest (field format)")
        version = root.raw("schema_version", None)
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise SchemaError(f"bundle schema version {str(version)[:20]} is not supported (this winclip-edge reads "
                              f"versions {', '.join(map(str, READABLE_VERSIONS))}); re-export the bundle")
        if version == 1:
            root = Node(upgrade_v1(root), "")
        manifest = _read_v2(root)
        if manifest.schema_version > max(version, 2):  # version 1 is read as 2
            newest = max(manifest.engines, key=lambda e: ENGINE_FORMATS[e.format].schema_version)
            raise SchemaError(f"an engine of format {newest.format} needs bundle schema version "
                              f"{manifest.schema_version}; the manifest says {version}")
        return manifest


def _read_v2(root: Node) -> Manifest:
    pre = root.node("preprocess")
    preprocess = Preprocess(
        input_size=tuple(pre.ints("input_size", 2, 2, 16, 8192)),
        mean=tuple(pre.floats("mean", 3, -10.0, 10.0)),
        std=tuple(pre.floats("std", 3, 0.0, 10.0, lo_open=True)),
        resize=pre.str("resize", choices=(RESIZE_SQUASH,)),
        interpolation=pre.str("interpolation", choices=(INTERPOLATION_BICUBIC,)),
        antialias=pre.bool("antialias"),
        channel_order=pre.str("channel_order", choices=(CHANNELS_RGB,)),
    )
    if not preprocess.antialias:
        raise SchemaError("field preprocess.antialias is false; this runtime implements antialiased resizing only")
    backbone = root.node("backbone")
    backbone.str("name", max_len=200)
    backbone.str("open_clip_model", max_len=200)
    backbone.mapping("weights")
    windows = root.node("windows")
    grid = tuple(root.ints("grid", 2, 2, 1, 1024))
    dims = root.node("dims")
    feats = root.node("patch_features")
    text = root.node("text")
    manifest = Manifest(
        backbone=backbone.data,
        preprocess=preprocess,
        patch_size=tuple(root.ints("patch_size", 2, 2, 1, 1024)),
        grid=grid,
        scales=tuple(windows.ints("scales", 1, 8, 1, 1024)),
        stride=windows.int("stride", 1, 1024),
        embed_dim=dims.int("embed", 1, 1 << 16),
        width=dims.int("width", 1, 1 << 16),
        layers=dims.int("layers", 1, 1024),
        mlp_width=dims.int("mlp", 1, 1 << 18, default=4 * dims.int("width", 1, 1 << 16)),
        work_elimination=windows.bool("work_elimination", default=False),
        patch_layer=feats.int("layer", 1, 1024),
        patch_ln_post=feats.bool("ln_post"),
        engines=tuple(_read_engine(Node(e, f"engines[{i}]"))
                      for i, e in enumerate(root.list("engines", 1, MAX_ENGINES))),
        objects=_read_objects(text.node("objects")),
        text_ensemble=text.str("ensemble", max_len=100),
        prompts={key: text.strs(key) for key in ("normal_states", "anomalous_states", "templates") if text.has(key)},
        temperature=root.node("scoring").float("temperature", 0.0, 100.0, lo_open=True),
        versions=root.mapping("versions", default={}),
        created=root.str("created", default="", max_len=100),
    )
    # copies of derived facts, written for people and other tools: they must agree
    counts = windows.mapping("counts")
    want = {str(k): n for k, n in manifest.window_counts.items()}
    if counts != want:
        raise SchemaError(f"field windows.counts {_short(counts)} disagrees with the grid and scales ({want})")
    io = root.node("io")
    for key, want_shapes in (("inputs", manifest.input_shapes()), ("outputs", manifest.output_shapes())):
        got = io.mapping(key)
        if got != want_shapes:
            raise SchemaError(f"field io.{key} {_short(got)} disagrees with the grid, scales and dims ({want_shapes})")
    return manifest


def _read_engine(node: Node) -> Engine:
    weights = None
    if node.raw("weights", None) is not None:
        ref = node.node("weights")
        weights = FileRef(ref.file("file"), ref.sha256("sha256"))
    return Engine(
        file=node.file("file"),
        precision=node.str("precision", choices=PRECISIONS),
        sha256=node.sha256("sha256"),
        made_by=node.mapping("made_by", default={}),
        verification=node.mapping("verification") if node.raw("verification", None) is not None else None,
        guard=node.mapping("guard") if node.raw("guard", None) is not None else None,
        accepted_degraded=node.bool("accepted_degraded", default=False),
        format=node.str("format", default=FORMAT_ONNX, choices=tuple(ENGINE_FORMATS)),
        weights=weights,
    )


def _read_objects(node: Node) -> dict[str, FileRef]:
    if not 1 <= len(node.data) <= MAX_OBJECTS:
        raise SchemaError(f"field text.objects must name 1..{MAX_OBJECTS} objects, has {len(node.data)}")
    out = {}
    for name in node.data:
        if len(name) > 200 or name != " ".join(name.replace("_", " ").split()) or not name:
            raise SchemaError(f"field text.objects has a badly formed object name {name[:80]!r}")
        entry = node.node(name)
        out[name] = FileRef(entry.file("file"), entry.sha256("sha256"))
    return out


def upgrade_v1(root: Node) -> dict:
    """A version-1 manifest re-expressed as version 2 (in memory; the file is not touched)."""
    graph = root.node("graph")
    files = root.mapping("files")

    def ref(name: str, field_name: str) -> dict:
        plain_file_name(name, f"field {field_name}")
        if name not in files:
            raise SchemaError(f"manifest uses {name!r} but has no checksum for it")
        return {"file": name, "sha256": files[name]}

    engine = {**ref(graph.raw("file"), "graph.file"), "precision": graph.str("precision", default="fp32"),
              "made_by": {"tool": "winclip-export", "exporter": graph.raw("exporter", None),
                          "opset": graph.raw("opset", None)},
              "verification": root.raw("verification", None)}
    text = dict(root.mapping("text"))
    objects = Node(text.get("objects"), "text.objects")
    text["objects"] = {name: ref(objects.str(name, max_len=1024), f"text.objects.{name}") for name in objects.data}
    data = {k: v for k, v in root.data.items() if k not in ("graph", "files", "verification")}
    return {**data, "schema_version": 2, "text": text, "engines": [engine],
            "io": {"inputs": graph.mapping("inputs"), "outputs": graph.mapping("outputs")}}


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
