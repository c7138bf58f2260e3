"""Engines: the work-eliminated graph against open_clip, int8 and fp16 engines with their guard, engine choice."""

import dataclasses
import hashlib
import inspect
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import TINY_CONFIG, line_frames, make_model, read, run_cli, textile_images
from winclip.calibration.engines import BUILDERS, Builder
from winclip.calibration.engines.guard import GuardLimits, pearson_rows, spearman
from winclip.calibration.engines.build import QuantizeError, add_engine
from winclip.calibration.engines.frames import frame_reader
from winclip.calibration.engines.int8 import Int8Settings
from winclip.export.windowed_visual import WindowedVisual
from winclip.runtime import Detector
from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import FORMAT_ONNX
from winclip.runtime.errors import BundleError
from winclip.benchmarks.flops import frame_flops

RELAXED = GuardLimits(map_pearson_median=0.9, map_pearson_min=0.8, score_spearman=0.5)  # a 2-layer random model
IMPOSSIBLE = GuardLimits(map_pearson_median=1.0, map_pearson_min=1.0, score_spearman=1.0, close_enough=0.0)


@pytest.fixture(scope="module")
def line_images(tmp_path_factory):
    return line_frames(tmp_path_factory.mktemp("line"), 5)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def perturbed_block(graph: bytes, block: int, spread: float, seed: int = 0) -> bytes:
    """The graph with every weight matrix of one transformer block (1-based) perturbed by Gaussian noise of
    `spread` times that matrix's own standard deviation: an engine whose maker damaged one block."""
    model = onnx.load_from_string(graph)
    prefix = f"/explicit.{block - 1}"  # the export's node names; the windows' passes add a suffix (_1, _2)
    fed = {name for node in model.graph.node if node.op_type == "MatMul"
           and node.name.startswith((prefix + "/", prefix + "_")) for name in node.input}
    rng = np.random.default_rng(seed)
    changed = 0
    for tensor in model.graph.initializer:
        if tensor.name in fed and len(tensor.dims) == 2:
            w = numpy_helper.to_array(tensor)
            noisy = (w + rng.normal(0.0, spread * float(w.std()), w.shape)).astype(w.dtype)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
            changed += 1
    assert changed >= 4, f"block {block}: only {changed} weight matrices found"  # QKV, out, MLP in and out
    return model.SerializeToString()


class DamagedBlockBuilder(Builder):
    """A row for the builders' table whose engine is the fp32 graph with block 2's weights perturbed.

    At spread 0.4 the embeddings keep a cosine of 0.98-0.99 with fp32 and the few-shot maps a
    correlation of about 0.95: what full-range int8 weights did to ViT-B-16+ on an AVX2 CPU
    (docs/engines.md), the kind of engine the guard exists to refuse.
    """

    backend = "onnxruntime"
    precision = "int8"
    format = FORMAT_ONNX
    guard_device = "cpu"
    settings_type = Int8Settings

    def __init__(self, spread: float):
        self.spread = spread

    def describe(self, settings) -> str:
        return f"block 2 perturbed by {self.spread:.0%}"

    def make(self, fp32: Path, out: Path, settings, frames, input_name: str) -> None:
        out.write_bytes(perturbed_block(fp32.read_bytes(), block=2, spread=self.spread))

    def record(self, settings) -> dict:
        return {"perturbed_block": 2, "spread": self.spread}


# ---- exact work elimination
@pytest.mark.parametrize("kwargs", [{}, {"patch_layer": 1, "patch_ln_post": True}, {"scales": (3,), "stride": 2}])
def test_work_elimination_is_exact(tiny_model, kwargs):
    x = torch.randn(3, 3, 80, 80)
    with torch.no_grad():
        plain = WindowedVisual(tiny_model.visual, eliminate=False, **kwargs).eval()(x)
        lean = WindowedVisual(tiny_model.visual, eliminate=True, **kwargs).eval()(x)
        own = tiny_model.encode_image(x)
    assert WindowedVisual(tiny_model.visual).eliminate
    for a, b in zip(plain, lean):
        assert a.shape == b.shape and float((a - b).abs().max()) < 1e-5
    assert float((lean[0] - own).abs().max()) < 1e-5


def test_work_elimination_with_a_single_block():
    """One block is both the first (shared QKV) and the last (class token only)."""
    import open_clip

    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["vision_cfg"]["layers"] = 1
    path = TINY_CONFIG.parent / "winclip-tiny-1layer.json"
    path.write_text(json.dumps(cfg))
    try:
        open_clip.add_model_config(path)
        model = make_model("winclip-tiny-1layer")
    finally:
        path.unlink()
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        plain = WindowedVisual(model.visual, eliminate=False).eval()(x)
        lean = WindowedVisual(model.visual, eliminate=True).eval()(x)
    for a, b in zip(plain, lean):
        assert float((a - b).abs().max()) < 1e-5


def test_frame_flops_before_and_after(tiny_bundle):
    """ViT-B-16+ numbers: 54.8 GFLOP whole image, 227 + 392 windows, 673.5 in all; elimination saves 7%."""
    m = Bundle.load(tiny_bundle).manifest
    assert m.work_elimination and m.mlp_width == 256
    from dataclasses import replace

    vit = replace(m, preprocess=replace(m.preprocess, input_size=(240, 240)), grid=(15, 15), width=896,
                  mlp_width=3584, layers=12, embed_dim=640, patch_layer=12)
    before, after = frame_flops(vit, work_elimination=False), frame_flops(vit)
    assert round(before["image"] / 1e9, 1) == 54.8 and round(before["total"] / 1e9, 1) == 673.5
    assert round(before["windows_2"] / 1e9) == 227 and round(before["windows_3"] / 1e9) == 392
    assert after["image"] == before["image"] and 0.92 < after["total"] / before["total"] < 0.93


# ---- int8 and fp16 engines
def test_int8_engine_is_added_guarded_and_chosen_on_cpu(tiny_bundle_copy, line_images):
    engine = add_engine(tiny_bundle_copy, "int8", line_images)  # the default limits: auto trusts only those
    m = json.loads((tiny_bundle_copy / "manifest.json").read_text())
    assert [e["precision"] for e in m["engines"]] == ["fp32", "int8"]
    entry = m["engines"][1]
    assert entry["file"] == engine.file and entry["guard"]["passed"] and not entry["accepted_degraded"]
    assert entry["made_by"]["settings"]["method"] == "dynamic" and entry["made_by"]["frames"]["holdout"] == 6
    assert set(entry["guard"]["modes"]) == {"zero-shot", "few-shot"}
    assert (tiny_bundle_copy / engine.file).stat().st_size < (tiny_bundle_copy / "visual.onnx").stat().st_size
    auto = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)
    assert auto.engine.precision == "int8" and "guarded int8" in auto.describe()
    fp32 = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="fp32", cache=False)
    frames = [read(p) for p in textile_images("global", 3)]
    a, b = auto(frames), fp32(frames)
    assert all(abs(x.image_score - y.image_score) < 0.05 for x, y in zip(a, b))
    assert pearson_rows(np.stack([x.anomaly_map.ravel() for x in a]), np.stack([y.anomaly_map.ravel() for y in b])).min() > 0.8


def test_a_guard_failure_leaves_the_bundle_as_it_was(tiny_bundle_copy, line_images):
    before = _snapshot(tiny_bundle_copy)
    with pytest.raises(QuantizeError, match="failed its accuracy guard: zero-shot map pearson median"):
        add_engine(tiny_bundle_copy, "int8", line_images, limits=IMPOSSIBLE)
    assert _snapshot(tiny_bundle_copy) == before


def test_the_default_limits_refuse_a_degraded_engine(tiny_bundle_copy, line_images, monkeypatch):
    """Block 2 damaged (see DamagedBlockBuilder): refused under the limits every user gets, naming what it lost.
    The good half, an engine that keeps what fp32 gives, passing the same defaults: the fp16 test below."""
    monkeypatch.setitem(BUILDERS, ("onnxruntime", "int8"), DamagedBlockBuilder(spread=0.4))
    before = _snapshot(tiny_bundle_copy)
    with pytest.raises(QuantizeError, match="the int8 engine failed its accuracy guard") as refused:
        add_engine(tiny_bundle_copy, "int8", line_images)  # no limits given: the defaults
    failures = str(refused.value).split("guard: ", 1)[1].split("; the bundle is unchanged")[0].split("; ")
    named = {re.sub(r" [-0-9.]+ < [0-9.]+$", "", f) for f in failures}
    assert {"few-shot map pearson median", "few-shot map pearson min", "zero-shot map pearson median",
            "zero-shot score spearman", "embedding cosine window_embeddings_2",
            "embedding cosine patch_features"} <= named, failures
    assert _snapshot(tiny_bundle_copy) == before
    # the embedding cosine is a limit of its own: with every other limit off it still refuses this engine
    off = GuardLimits(map_pearson_median=-1.0, map_pearson_min=-1.0, score_spearman=-1.0)
    engine = add_engine(tiny_bundle_copy, "int8", line_images, limits=off, accept_degraded=True)
    cosines = engine.guard["embedding_cosine_min"]
    assert engine.accepted_degraded and engine.guard["failures"] == [
        f"embedding cosine {name} {value:.4f} < 0.99" for name, value in cosines.items() if value < 0.99]
    assert min(cosines.values()) > 0.95 and engine.guard["limits"]["embedding_cosine_min"] == 0.99


def test_the_documented_guard_defaults_are_the_ones_applied():
    """docs/engines.md's table, winclip-quantize's option defaults and add_engine's default limits agree."""
    from winclip.calibration.engines.cli import main

    text = (Path(__file__).parents[1] / "docs" / "engines.md").read_text()
    documented = {option: float(value) for value, option in
                  re.findall(r"^\|[^|\n]+\| >= ([0-9.]+) \| `(--min-[a-z-]+)` \|$", text, re.MULTILINE)}
    fields = {"--min-map-pearson-median": "map_pearson_median", "--min-map-pearson": "map_pearson_min",
              "--min-score-spearman": "score_spearman", "--min-embedding-cosine": "embedding_cosine_min"}
    assert set(documented) == set(fields), documented
    cli_defaults = {opt: p.default for p in main.params for opt in p.opts if opt in fields}
    applied = inspect.signature(add_engine).parameters["limits"].default
    for option, field in fields.items():
        assert documented[option] == cli_defaults[option] == getattr(applied, field), option
    assert applied.close_enough == 1e-3 and "within 1e-3 everywhere" in text


def test_accept_degraded_is_recorded_and_warned_about(tiny_bundle_copy, line_images, caplog):
    engine = add_engine(tiny_bundle_copy, "int8", line_images, limits=IMPOSSIBLE, accept_degraded=True)
    assert engine.accepted_degraded and not engine.guard["passed"]
    caplog.clear()
    det = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="int8", cache=False)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert det.engine.accepted_degraded and len(warned) == 1 and "FAILED its accuracy guard" in warned[0]
    assert "map pearson median" in warned[0]  # the failures, in words
    # auto never picks an engine that failed its guard
    assert Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False).engine.precision == "fp32"


def test_static_int8_calibrates_through_a_reader_on_frames_the_guard_never_sees(tiny_bundle_copy, line_images,
                                                                              monkeypatch):
    from onnxruntime.quantization import CalibrationDataReader

    from winclip.calibration.engines import build, int8

    batches = [np.zeros((1, 3, 80, 80), np.float32), np.ones((1, 3, 80, 80), np.float32)]
    reader = frame_reader(batches, "images")
    assert isinstance(reader, CalibrationDataReader)
    assert [reader.get_next()["images"].sum() for _ in range(2)] == [0, 3 * 80 * 80] and reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None
    # what the quantiser calibrates on and what the guard judges on, as they are handed over
    seen = {}

    def calibration_reader(frames, input_name):
        seen["calibration"] = list(frames)
        return frame_reader(frames, input_name)

    real_guard = build.guard

    def judging_guard(reference, candidate, scorer, holdout, memory_frames, key, limits):
        seen["holdout"], seen["memory"] = list(holdout), list(memory_frames)
        return real_guard(reference, candidate, scorer, holdout, memory_frames, key, limits)

    monkeypatch.setattr(int8, "frame_reader", calibration_reader)
    monkeypatch.setattr(build, "guard", judging_guard)
    engine = add_engine(tiny_bundle_copy, "int8", line_images, limits=RELAXED, holdout=4,
                        settings=Int8Settings(method="static", quant_format="qdq", calibration_frames=3))
    assert engine.made_by["frames"]["calibration"] == 3 and engine.made_by["settings"]["quant_format"] == "qdq"
    graph = onnx.load(str(tiny_bundle_copy / engine.file))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="int8", cache=False)
    # held-out guard frames, the guard's memory frame and the calibration frames: 8 different images
    digest = {k: [hashlib.sha256(f.tobytes()).hexdigest() for f in v] for k, v in seen.items()}
    assert (len(digest["holdout"]), len(digest["memory"]), len(digest["calibration"])) == (4, 1, 3)
    assert len(set(digest["holdout"]) | set(digest["memory"]) | set(digest["calibration"])) == 8
    assert len({hashlib.sha256(read(p).tobytes()).hexdigest() for p in line_images.iterdir()}) == 10  # all differ


def test_replacing_an_engine_needs_force_and_removes_the_old_file(tiny_bundle_copy, line_images):
    first = add_engine(tiny_bundle_copy, "int8", line_images, limits=RELAXED)
    with pytest.raises(QuantizeError, match="already has an int8 engine"):
        add_engine(tiny_bundle_copy, "int8", line_images, limits=RELAXED)
    second = add_engine(tiny_bundle_copy, "int8", line_images, limits=RELAXED, force=True,
                        settings=Int8Settings(per_channel=False))
    files = {p.name for p in tiny_bundle_copy.iterdir()}
    assert second.file in files and (first.file == second.file or first.file not in files)
    assert Bundle.load(tiny_bundle_copy).manifest.precisions == ["fp32", "int8"]


def test_fp16_engine_structure_and_numbers_on_cpu(tiny_bundle_copy, line_images):
    engine = add_engine(tiny_bundle_copy, "fp16", line_images)  # a good engine: it passes the default limits
    graph = onnx.load(str(tiny_bundle_copy / engine.file))
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == f32 for v in [*graph.graph.input, *graph.graph.output])
    weights = {t.name: t.data_type for t in graph.graph.initializer if len(t.dims) == 2}
    assert weights and all(t == f16 for t in weights.values())
    # LayerNorm and Softmax run in fp32: their inputs come through a Cast to float
    casts = {n.output[0]: n for n in graph.graph.node if n.op_type == "Cast"}
    for node in graph.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            src = casts.get(node.input[0])
            assert src is not None and next(a.i for a in src.attribute if a.name == "to") == f32, node.name
    assert engine.guard["passed"] and engine.guard["limits"] == dataclasses.asdict(GuardLimits())
    assert min(engine.guard["embedding_cosine_min"].values()) > 0.999
    frame = read(textile_images("global", 1)[0])
    a = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="fp16", cache=False)(frame)[0]
    b = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="fp32", cache=False)(frame)[0]
    assert abs(a.image_score - b.image_score) < 1e-2 and np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-2
    # auto on a CPU box never picks the CUDA engine
    assert Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False).engine.precision == "fp32"


def test_quantize_refusals(tiny_bundle_copy, line_images, tmp_path, monkeypatch):
    few = tmp_path / "few"
    few.mkdir()
    for p in textile_images("nominal", 3):
        shutil.copy(p, few / p.name)
    (few / "broken.png").write_bytes(b"not a png")
    with pytest.raises(QuantizeError, match=r"has 3 usable images; 7 are needed \(6 held out for the guard"):
        add_engine(tiny_bundle_copy, "int8", few)
    with pytest.raises(QuantizeError, match=r"has 10 usable images; 11 are needed .*4 to calibrate"):
        add_engine(tiny_bundle_copy, "int8", line_images, settings=Int8Settings(method="static", calibration_frames=4))
    with pytest.raises(QuantizeError, match="blocks 1..2"):
        add_engine(tiny_bundle_copy, "int8", line_images, settings=Int8Settings(fp32_blocks=(3,)))
    before = _snapshot(tiny_bundle_copy)
    os.chmod(tiny_bundle_copy, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(tiny_bundle_copy, os.W_OK):  # root (as in CI) writes anyway: the refusal is simulated
            from winclip.calibration.engines import build

            monkeypatch.setattr(build.os, "access", lambda path, mode: False)
        with pytest.raises(QuantizeError, match="read-only"):
            add_engine(tiny_bundle_copy, "int8", line_images)
    finally:
        monkeypatch.undo()
        os.chmod(tiny_bundle_copy, 0o755)
    assert _snapshot(tiny_bundle_copy) == before


def test_quantize_cli(tiny_bundle_copy, line_images):
    relaxed = ("--min-map-pearson-median", "0.9", "--min-map-pearson", "0.8", "--min-score-spearman", "0.5",
               "--reduce-range")  # 7-bit weights whatever this CPU has: the same engine on every machine
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--precision", "int8", "--images", str(line_images),
                   *relaxed, "--min-embedding-cosine", "1.0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "failed its accuracy guard: embedding cosine image_embedding 0." in proc.stderr
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--precision", "int8", "--images", str(line_images),
                   *relaxed)
    assert proc.returncode == 0, proc.stderr
    assert "| zero-shot |" in proc.stderr and "added visual-int8-" in proc.stdout
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--precision", "int8", "--images", str(line_images))
    assert proc.returncode != 0 and "already has an int8 engine" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--precision", "int8", "--images", str(line_images),
                   "--min-map-pearson", "2")
    assert proc.returncode == 2 and "not in the range 0.0<=x<=1.0" in proc.stderr
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--precision", "int8", "--images", str(line_images),
                   "--min-embedding-cosine", "1.5")
    assert proc.returncode == 2 and "not in the range 0.0<=x<=1.0" in proc.stderr


def test_every_builder_is_a_row_of_facts_the_runtime_knows():
    """Each builder's precision, format and backend are the runtime's; the options two builders share are the
    same option object (shown once), and no two different options take one name."""
    from winclip.calibration.engines.base import collect_options, option_names
    from winclip.runtime.backends import BACKENDS
    from winclip.runtime.contract import ENGINE_FORMATS
    from winclip.runtime.defaults import PRECISIONS

    for (backend, precision), builder in BUILDERS.items():
        assert (builder.backend, builder.precision) == (backend, precision) and isinstance(builder, Builder)
        assert precision in PRECISIONS and builder.format in ENGINE_FORMATS and backend in BACKENDS
    names = option_names(collect_options(BUILDERS.values()))
    assert len(names) == len(set(names)) and {"method", "preset", "reduce_range"} <= set(names), names
    with pytest.raises(TypeError, match="one side file per engine"):
        type("TwoSideFiles", (Builder,), {"side_files": (".bin", ".idx")})


def test_a_new_builder_is_one_file_and_one_row(tiny_bundle_copy, line_images, monkeypatch):
    """tests/fake_builder.py, its row added to BUILDERS (and its new precision's row to the runtime's
    PRECISIONS): winclip-quantize offers it with its own option, makes, guards and records its engine, and
    `--precision auto` picks it where its precision row says."""
    from winclip.runtime.backends.policy import choose_engine
    from winclip.runtime.defaults import PRECISIONS

    import fake_builder

    rows = ("import sys, fake_builder\n"
            "from winclip.calibration.engines import BUILDERS\n"
            "from winclip.runtime.defaults import PRECISIONS\n"
            "PRECISIONS.update(fake_builder.PRECISION_ROW)\n"
            "BUILDERS.update(fake_builder.BUILDER_ROW)\n"
            "from winclip.calibration.engines.cli import main\n"
            "sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}

    def quantize(*args):
        return subprocess.run([sys.executable, "-c", rows, *args], capture_output=True, text=True, env=env, timeout=600)

    shown = quantize("--help")
    assert shown.returncode == 0 and "--copy-note" in shown.stdout and "fp32-copy" in shown.stdout, shown.stderr
    proc = quantize(str(tiny_bundle_copy), "--precision", fake_builder.PRECISION, "--images", str(line_images),
                    "--copy-note", "made by a test")
    assert proc.returncode == 0, proc.stderr
    assert "| zero-shot |" in proc.stderr and "guarded at f32 compute" in proc.stderr
    assert f"added visual-{fake_builder.PRECISION}-" in proc.stdout
    entry = json.loads((tiny_bundle_copy / "manifest.json").read_text())["engines"][-1]
    assert entry["precision"] == fake_builder.PRECISION and entry["file"].startswith(f"visual-{fake_builder.PRECISION}-")
    assert entry["guard"]["passed"] and entry["guard"]["compute"] == "f32" and not entry["accepted_degraded"]
    assert entry["guard"]["recipe"] == "a copy of fp32 (made by a test)"
    assert entry["made_by"]["settings"] == {"note": "made by a test"} and entry["made_by"]["backend"] == "onnxruntime"
    assert {"winclip-edge", "onnx", "onnxruntime"} <= set(entry["made_by"]["versions"])
    graph = onnx.load(str(tiny_bundle_copy / entry["file"]))
    assert graph.doc_string == "fp32 copy: made by a test"
    # the runtime loads it once its precision is a row; auto tries it where the row says (here: the CPU)
    for precision, row in fake_builder.PRECISION_ROW.items():
        monkeypatch.setitem(PRECISIONS, precision, row)
    manifest = Bundle.load(tiny_bundle_copy).manifest
    engine, why = choose_engine(manifest, "auto", "cpu")
    assert engine.precision == fake_builder.PRECISION and why == "auto: an fp32 copy (a test's row)"
    assert choose_engine(manifest, "auto", "cuda")[0].precision == "fp32"
    frames = [read(p) for p in textile_images("global", 2)]
    copy = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)
    fp32 = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="fp32", cache=False)
    assert copy.engine.precision == fake_builder.PRECISION
    assert [r.image_score for r in copy(frames)] == pytest.approx([r.image_score for r in fp32(frames)], abs=1e-6)


def test_engine_choice_errors(tiny_bundle):
    with pytest.raises(BundleError, match=r"no int8 engine \(it has: fp32\); add one with winclip-quantize"):
        Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", precision="int8")
    with pytest.raises(BundleError, match="unknown precision"):
        Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", precision="int4")


def _with_engines(manifest, *precisions, degraded=(), root=None):
    """The manifest with entries for more engines, each a copy of the fp32 graph under its own name (the policy
    reads the manifest only); the copies are written into `root` when given."""
    fp32 = manifest.engine("fp32")
    for precision in precisions:
        name = f"visual-{precision}.onnx"
        if root is not None:
            shutil.copy(root / fp32.file, root / name)
        manifest = manifest.with_engine(dataclasses.replace(fp32, file=name, precision=precision,
                                                            accepted_degraded=precision in degraded))
    return manifest


@pytest.mark.parametrize("have, degraded, device, chosen, why", [
    (("fp16", "int8"), (), "cuda", "fp16", "auto: fp16 on CUDA"),
    (("fp16", "int8"), (), "cpu", "int8", "auto: guarded int8 on CPU"),
    (("int8",), (), "cuda", "fp32", "auto: fp32"),  # int8 engines are made for the CPU provider
    (("fp16",), (), "cpu", "fp32", "auto: fp32"),  # fp16 is for CUDA
    (("fp16", "int8"), ("fp16",), "cuda", "fp32", "auto: fp32 (passed over: fp16 failed its guard)"),  # never auto
    (("fp16", "int8"), ("int8",), "cpu", "fp32", "auto: fp32 (passed over: int8 failed its guard)"),  # said why
    ((), (), "cuda", "fp32", "auto: fp32"),
])
def test_auto_precision_policy(tiny_bundle, have, degraded, device, chosen, why):
    from winclip.runtime.backends.policy import choose_engine

    manifest = _with_engines(Bundle.load(tiny_bundle).manifest, *have, degraded=degraded)
    engine, reason = choose_engine(manifest, "auto", device)
    assert (engine.precision, reason) == (chosen, why)
    for precision in manifest.precisions:  # asked for by name: that engine, degraded or not, on any device
        assert choose_engine(manifest, precision, device)[0].precision == precision


def test_auto_runs_fp16_when_the_first_provider_is_cuda(tiny_bundle_copy, monkeypatch):
    """No GPU here: onnxruntime is made to say it has CUDA, and the choice is followed from the provider list
    to the engine the backend opens (onnxruntime itself then falls back to its CPU provider)."""
    from winclip.runtime.backends import BackendOptions
    from winclip.runtime.backends import onnxruntime as ort_backend

    cuda, cpu = ort_backend.CUDA, ort_backend.CPU
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: [cpu])
    assert ort_backend.choose_providers("auto")[0] == [cpu] and ort_backend.choose_providers("cpu")[0] == [cpu]
    with pytest.raises(BundleError, match="no CUDA provider"):
        ort_backend.choose_providers("cuda")
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: ["AzureExecutionProvider", cuda, cpu])
    monkeypatch.setattr(ort_backend, "cuda_libraries_problem", lambda: None)  # as if the CUDA libraries loaded
    assert ort_backend.choose_providers("auto") == ([cuda, cpu], "") and ort_backend.choose_providers("cuda")[0] == [
        cuda, cpu]
    assert ort_backend.choose_providers("cpu")[0] == [cpu]
    bundle = Bundle.load(tiny_bundle_copy)
    bundle = dataclasses.replace(bundle, manifest=_with_engines(bundle.manifest, "fp16", "int8", root=bundle.root))
    # offered CUDA, the session starts on the CPU here (no GPU): the fp16 engine auto chose is refused as such...
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"), \
            pytest.raises(ort_backend.CudaDidNotStart, match="visual-fp16.onnx on CPU instead"):
        ort_backend.OnnxRuntimeBackend.open(bundle, BackendOptions(device="cuda", cache=False))
    # ...and auto then runs the CPU's choice, saying why
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        backend = ort_backend.OnnxRuntimeBackend.open(bundle, BackendOptions(device="auto", cache=False))
    assert backend.engine.precision == "int8" and backend.reason == (
        "auto: guarded int8 on CPU; provider auto: CUDA did not start, so the CPU")
    backend = ort_backend.OnnxRuntimeBackend.open(bundle, BackendOptions(device="cpu", cache=False))
    assert (backend.engine.precision, backend.reason) == ("int8", "auto: guarded int8 on CPU")


def test_guard_statistics_by_hand():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    b = np.array([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(pearson_rows(a, b), [1.0, -1.0])
    assert spearman(np.array([0.1, 0.5, 0.3]), np.array([1.0, 9.0, 2.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties share their average rank: (1, 2.5, 2.5, 4) vs (1, 2, 3, 4)
    assert spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833, abs=1e-6)


def test_a_bundle_that_cannot_be_written_is_left_as_it_was(tiny_bundle_copy, line_images, monkeypatch):
    """Root can write anywhere, so the file system's refusal is simulated at the two places it would come."""
    import errno

    from winclip.calibration.engines import build as quantize

    before = _snapshot(tiny_bundle_copy)
    monkeypatch.setattr(quantize.os, "access", lambda path, mode: False)
    with pytest.raises(QuantizeError, match="is read-only; nothing was changed"):
        add_engine(tiny_bundle_copy, "int8", line_images, limits=RELAXED)
    monkeypatch.undo()

    def refuse(root, manifest):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(quantize, "write_manifest", refuse)
    with pytest.raises(QuantizeError, match="cannot write into the bundle .*Read-only file system; nothing was changed"):
        add_engine(tiny_bundle_copy, "int8", line_images, limits=RELAXED)
    assert _snapshot(tiny_bundle_copy) == before


def test_gpu_check_flow_runs_on_the_cpu(tiny_bundle_copy, line_images, tmp_path):
    """CI has no GPU: the CUDA check's own flow (fp16 engine, timings, agreement) runs here on the CPU provider."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "winclip.benchmarks.gpu_check", "--bundle", str(tiny_bundle_copy),
                           "--images", str(line_images), "--provider", "cpu", "--batches", "1,2", "--repeats", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [(r["precision"], r["batch"]) for r in result["rows"]] == [("fp32", 1), ("fp32", 2), ("fp16", 1), ("fp16", 2)]
    assert result["agreement"]["map_pearson_min"] > 0.99 and "| fp16 | CPUExecutionProvider | 2 |" in proc.stdout
