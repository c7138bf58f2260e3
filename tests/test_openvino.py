"""The OpenVINO backend and its NNCF int8 engines, on the tiny model: made, guarded, stored, loaded, refused."""

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest

from conftest import line_frames, needs_openvino, run_cli
from winclip.calibration.engines import openvino_int8
from winclip.calibration.engines.openvino_int8 import NncfSettings
from winclip.runtime import Detector, cpu
from winclip.runtime.backends import BackendOptions, backend_class, open_backend
from winclip.runtime.bundle import Bundle
from winclip.runtime.errors import BundleError, MissingExtra

needs_openvino()  # under CI a failure, as the serve and browser tests are
import openvino as ov  # noqa: E402


def _frame(seed=0, shape=(70, 90, 3)):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root, m):
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def _rehash(root, m, name):
    digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
    for e in m["engines"]:
        if e["file"] == name:
            e["sha256"] = digest
        if (e.get("weights") or {}).get("file") == name:
            e["weights"]["sha256"] = digest
    _write_manifest(root, m)


@pytest.fixture(scope="session")
def line_images(tmp_path_factory):
    """16 real frames: 6 held out for the guard, 1 for its memory, 8 to calibrate NNCF on, 1 spare."""
    return line_frames(tmp_path_factory.mktemp("ov-line"), 8)


@pytest.fixture(scope="session")
def ir_bundle(tiny_bundle, line_images, tmp_path_factory):
    """The tiny bundle with an NNCF int8 IR beside an ONNX Runtime int8 engine (made once per session)."""
    root = tmp_path_factory.mktemp("ir") / "bundle"
    shutil.copytree(tiny_bundle, root)
    proc = run_cli("winclip-quantize", str(root), "--backend", "openvino", "--precision", "int8",
                   "--images", str(line_images), "--keep-float", "attention", "--accept-degraded")
    assert proc.returncode == 0, proc.stderr
    assert "added visual-int8-openvino-" in proc.stdout and "| zero-shot |" in proc.stderr
    assert "guarded at bf16 compute" in proc.stderr or "guarded at f32 compute" in proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1  # NNCF's progress bars stay off the result line
    # The tiny model's 7-bit ONNX Runtime engine (a CPU without VNNI) fails the rank guard on these frames
    # (score spearman 0.886: its scores sit within 4e-3 of each other) on any CPU; full-range passes with VNNI.
    seven_bit = () if cpu.current().int8_dot else ("--accept-degraded",)
    proc = run_cli("winclip-quantize", str(root), "--precision", "int8", "--images", str(line_images), *seven_bit)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def ir_copy(ir_bundle, tmp_path):
    return shutil.copytree(ir_bundle, tmp_path / "bundle")


def test_openvino_runs_the_fp32_graph_as_onnxruntime_does(tiny_bundle, tmp_path):
    frames = [_frame(0), _frame(1, (120, 60, 3))]
    ort = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", precision="fp32", cache=False)
    det = Detector.from_bundle(tiny_bundle, object="bottle", backend="openvino", provider="cpu", precision="fp32",
                               cache_dir=tmp_path)
    assert det.backend.name == "openvino" and det.backend.device == "CPU" and "f32 compute" in det.describe()
    for a, b in zip(ort(frames), det(frames)):
        # f32 compute: the same numbers to rounding (OpenVINO's CPU default would be bf16 on such CPUs)
        # (measured: f32 2e-8 / 6e-8; bf16 5e-5 / 6e-4 on the tiny model)
        assert abs(a.image_score - b.image_score) < 1e-5
        assert np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-4
    outputs, _ = det.embed(frames)
    det.backend.check_outputs(outputs, det.bundle.manifest, 2)


def test_one_engine_called_from_several_threads_answers_each_its_own(tiny_bundle, tmp_path):
    """The live loop, a teach preview (the page's thread) and the desk's worker all run the one engine: each call
    gets its own batch's outputs, and none fails because another thread's call is in flight."""
    import threading

    det = Detector.from_bundle(tiny_bundle, object="bottle", backend="openvino", provider="cpu", precision="fp32",
                               cache_dir=tmp_path)
    batches = [det.preprocess([_frame(seed)], "bgr") for seed in range(4)]
    alone = [det.backend.run(b) for b in batches]
    failures, wrong = [], []

    def caller(k: int) -> None:
        try:
            for _ in range(15):
                got = det.backend.run(batches[k])
                if any(not np.array_equal(got[name], alone[k][name]) for name in alone[k]):
                    wrong.append(k)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures and not wrong, (failures[:2], wrong[:5])


def test_the_nncf_recipe_follows_the_cpu_and_a_failure_without_vnni_says_what_to_use(monkeypatch):
    vnni = cpu.parse_cpuinfo("model name : Test EPYC\nflags : avx2 fma avx512f avx512_vnni\n", "x86_64")
    avx2 = cpu.parse_cpuinfo("model name : Test EPYC\nflags : avx2 fma\n", "x86_64")
    assert openvino_int8.for_this_cpu(NncfSettings(), vnni).overflow_fix == "first_layer_only"  # NNCF's default
    assert openvino_int8.for_this_cpu(NncfSettings(), avx2).overflow_fix == "enable"  # half-range weights everywhere
    assert openvino_int8.for_this_cpu(NncfSettings(overflow_fix="disable"), avx2).overflow_fix == "disable"  # asked
    builder = openvino_int8.BUILDER
    for machine, fix, hint in ((vnni, "first_layer_only", None), (avx2, "enable", openvino_int8.WITHOUT_VNNI)):
        monkeypatch.setattr(cpu, "current", lambda machine=machine: machine)
        assert builder.record(NncfSettings())["overflow_fix"] == fix
        assert f"overflow fix {fix.replace('_', ' ')}" in builder.describe(NncfSettings())
        assert builder.failure_hint() == hint
    assert openvino_int8.WITHOUT_VNNI.startswith("without VNNI this CPU's int8 kernels add in saturating 16-bit sums; "
                                                 "use the ONNX Runtime int8 engine")


def test_the_int8_ir_is_stored_checked_and_chosen_by_backend(ir_bundle):
    m = _manifest(ir_bundle)
    assert m["schema_version"] == 3
    ir = next(e for e in m["engines"] if e.get("format") == "openvino-ir")
    assert ir["file"].endswith(".xml") and ir["weights"]["file"].endswith(".bin")
    assert ir["weights"]["sha256"] == hashlib.sha256((ir_bundle / ir["weights"]["file"]).read_bytes()).hexdigest()
    assert ir["made_by"]["backend"] == "openvino" and ir["made_by"]["settings"]["ignore"] == ["attention"]
    assert ir["made_by"]["settings"]["float_matmuls"] > 0 and ir["made_by"]["cpu"]["flags"] is not None
    fix = "first_layer_only" if cpu.current().int8_dot else "enable"  # the recipe of the CPU it was made on
    assert ir["made_by"]["settings"]["overflow_fix"] == fix and fix.replace("_", " ") in ir["guard"]["recipe"]
    assert set(ir["guard"]["embedding_cosine_min"]) == {"image_embedding", "window_embeddings_2",
                                                       "window_embeddings_3", "patch_features"}
    b = Bundle.load(ir_bundle)
    assert b.manifest.labels == ["fp32", "int8 openvino-ir", "int8"] and b.manifest.precisions == ["fp32", "int8"]
    frame = _frame(2)
    on_ov = Detector.from_bundle(ir_bundle, object="bottle", backend="openvino", precision="int8", cache=False)
    on_ort = Detector.from_bundle(ir_bundle, object="bottle", backend="onnxruntime", precision="int8", cache=False)
    assert on_ov.engine.format == "openvino-ir" and on_ort.engine.format == "onnx"  # each runs its own format
    fp32 = Detector.from_bundle(ir_bundle, object="bottle", precision="fp32", cache=False)(frame)[0]
    for det in (on_ov, on_ort):
        result = det(frame)[0]
        assert abs(result.image_score - fp32.image_score) < 0.05


def test_onnxruntime_is_never_offered_an_ir(ir_copy):
    m = _manifest(ir_copy)
    m["engines"] = [e for e in m["engines"] if e.get("format") == "openvino-ir" or e["precision"] == "fp32"]
    _write_manifest(ir_copy, m)
    det = Detector.from_bundle(ir_copy, object="bottle", backend="onnxruntime", cache=False)
    assert det.engine.precision == "fp32"  # auto: the IR int8 is not for onnxruntime
    with pytest.raises(BundleError, match="no int8 engine this backend runs .*int8 openvino-ir"):
        Detector.from_bundle(ir_copy, object="bottle", backend="onnxruntime", precision="int8", cache=False)


def test_ir_weights_are_checksummed_and_old_versions_refuse_an_ir(ir_copy):
    m = _manifest(ir_copy)
    ir = next(e for e in m["engines"] if e.get("format") == "openvino-ir")
    weights = ir_copy / ir["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch for bundle file {ir['weights']['file']}"):
        Detector.from_bundle(ir_copy, object="bottle", backend="openvino", precision="int8", cache=False)
    m["schema_version"] = 2
    _write_manifest(ir_copy, m)
    with pytest.raises(BundleError, match="needs bundle schema version 3"):
        Bundle.load(ir_copy)
    m["schema_version"] = 3
    del ir["weights"]
    _write_manifest(ir_copy, m)
    with pytest.raises(BundleError, match="needs its weights file"):
        Bundle.load(ir_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda xml: xml.replace('version="opset1"', 'version="my_extension"', 1), "uses a custom operation"),
    (lambda xml: '<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
     + xml.split("\n", 1)[1], "declares XML entities"),
    (lambda xml: "<model/>", "is not an OpenVINO IR"),
])
def test_an_ir_that_is_not_plain_openvino_is_refused(ir_copy, edit, message):
    m = _manifest(ir_copy)
    ir = next(e for e in m["engines"] if e.get("format") == "openvino-ir")
    path = ir_copy / ir["file"]
    path.write_text(edit(path.read_text()))
    _rehash(ir_copy, m, ir["file"])
    with pytest.raises(BundleError, match=message):
        Detector.from_bundle(ir_copy, object="bottle", backend="openvino", precision="int8", cache=False)


def test_a_device_openvino_does_not_have_is_refused_with_the_list(tiny_bundle):
    with pytest.raises(BundleError, match=r"OpenVINO has no device 'TPU' here; it has: .*CPU"):
        Detector.from_bundle(tiny_bundle, object="bottle", backend="openvino", provider="TPU", cache=False)
    with pytest.raises(BundleError, match=r"OpenVINO does not drive CUDA.*CPU"):
        Detector.from_bundle(tiny_bundle, object="bottle", backend="openvino", provider="cuda", cache=False)
    if "NPU" not in ov.Core().available_devices:
        with pytest.raises(BundleError, match=r"no device 'npu'.*it has: .*CPU"):
            Detector.from_bundle(tiny_bundle, object="bottle", backend="openvino", provider="npu", cache=False)


def test_bf16_compute_is_asked_for_and_refused_where_the_cpu_has_none(tiny_bundle, monkeypatch):
    b = Bundle.load(tiny_bundle)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        backend = open_backend(b, "openvino", BackendOptions(device="cpu", precision="fp32", cache=False,
                                                              inference_precision="bf16"))
        assert backend.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    monkeypatch.setattr(ov.Core, "get_property", lambda self, device, name: ["FP32", "INT8"])
    with pytest.raises(BundleError, match="no bf16 arithmetic"):
        open_backend(b, "openvino", BackendOptions(device="cpu", precision="fp32", cache=False,
                                                    inference_precision="bf16"))


def test_an_engine_runs_at_the_compute_precision_its_guard_measured(ir_bundle, ir_copy, monkeypatch):
    from winclip.runtime.backends.openvino import cpu_computes_bf16

    has_bf16 = cpu_computes_bf16()
    ir = next(e for e in _manifest(ir_bundle)["engines"] if e.get("format") == "openvino-ir")
    assert ir["guard"]["compute"] == ("bf16" if has_bf16 else "f32")  # the guard ran it as this CPU will

    def hint(root, **extra):
        backend = open_backend(Bundle.load(root), "openvino", BackendOptions(device="cpu", precision="int8",
                                                                            cache=False, **extra))
        return backend.compiled.get_property("INFERENCE_PRECISION_HINT"), backend.reason

    m = _manifest(ir_copy)
    record = next(e for e in m["engines"] if e.get("format") == "openvino-ir")["guard"]
    record.update(compute="bf16", passed=True, failures=[])
    _write_manifest(ir_copy, m)
    if has_bf16:
        got, reason = hint(ir_copy)
        assert got == ov.Type.bf16 and "bf16 compute, as guarded" in reason
        assert hint(ir_copy, inference_precision="f32")[0] == ov.Type.f32  # forcing still wins
    record.update(passed=False)  # a guard that failed vouches for nothing: f32, the closer one
    _write_manifest(ir_copy, m)
    assert hint(ir_copy)[0] == ov.Type.f32
    record.update(compute="f32", passed=True)
    _write_manifest(ir_copy, m)
    got, reason = hint(ir_copy)
    assert got == ov.Type.f32 and "f32 compute, as guarded" in reason
    record.update(compute="bf16")  # guarded at bf16, run where the CPU has none: f32, never refused
    _write_manifest(ir_copy, m)
    monkeypatch.setattr(ov.Core, "get_property", lambda self, device, name: ["FP32", "INT8"])
    assert hint(ir_copy)[0] == ov.Type.f32


def test_compiled_blobs_live_in_the_users_cache_and_a_stale_one_is_rebuilt(tiny_bundle, tmp_path):
    cache = tmp_path / "cache"
    other = cache / "openvino-2020.1.0"  # what an older OpenVINO left behind
    other.mkdir(parents=True)
    (other / "123.blob").write_bytes(b"old")
    options = dict(object="bottle", backend="openvino", precision="fp32", cache_dir=cache, self_check=False)
    frame = _frame(3)
    first = Detector.from_bundle(tiny_bundle, **options)
    assert not first.backend.loaded_from_cache and not other.exists()
    blobs = list(cache.glob("openvino-*/*.blob"))
    assert len(blobs) == 1 and not list(tiny_bundle.glob("*.blob"))
    want = first(frame)[0].image_score
    assert Detector.from_bundle(tiny_bundle, **options).backend.loaded_from_cache
    # the blob as another OpenVINO release would have written it: its header names that version
    version = ov.__version__.split("-")[0].encode()
    blob = blobs[0]
    blob.chmod(0o644)
    data = blob.read_bytes()
    assert version in data
    blob.write_bytes(data.replace(version, b"2020.1.0"[:len(version)].ljust(len(version), b"0")))
    stale = Detector.from_bundle(tiny_bundle, **options)
    assert not stale.backend.loaded_from_cache and stale(frame)[0].image_score == pytest.approx(want, abs=1e-6)
    assert Detector.from_bundle(tiny_bundle, **options).backend.loaded_from_cache  # rebuilt, then used
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:1000])  # a truncated blob (a full disk, a crash)
    cut = Detector.from_bundle(tiny_bundle, **options)
    assert not cut.backend.loaded_from_cache and cut(frame)[0].image_score == pytest.approx(want, abs=1e-6)


def test_without_openvino_the_extra_names_itself(tiny_bundle, line_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` sees where it is not installed
    monkeypatch.delitem(sys.modules, "winclip.runtime.backends.openvino", raising=False)
    with pytest.raises(MissingExtra, match=r'openvino backend needs openvino: pip install "\.\[openvino\]"'):
        backend_class("openvino")
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    from winclip.calibration.engines.build import add_engine

    with pytest.raises(MissingExtra, match=r'OpenVINO int8 engines need openvino: pip install "\.\[openvino\]"'):
        add_engine(copy, "int8", line_images, backend="openvino")
    assert _manifest(copy) == _manifest(tiny_bundle)


def test_quantize_openvino_bad_input_is_one_line(tiny_bundle_copy, line_images):
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--backend", "openvino", "--precision", "fp16",
                   "--images", str(line_images))
    assert proc.returncode != 0 and "no builder makes a fp16 engine for openvino" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--backend", "openvino", "--precision", "int8",
                   "--images", str(line_images), "--keep-float", "everything")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("winclip-quantize", str(tiny_bundle_copy), "--backend", "openvino", "--precision", "int8",
                   "--images", str(line_images), "--smooth-quant-alpha", "1.5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_an_onnx_graph_with_external_data_is_refused_by_openvino_too(tiny_bundle_copy, tmp_path, monkeypatch):
    import onnx

    graph = tiny_bundle_copy / "visual.onnx"
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    _rehash(tiny_bundle_copy, _manifest(tiny_bundle_copy), "visual.onnx")
    for cwd in (tmp_path, tiny_bundle_copy):  # whatever the working directory, weights.bin never loads
        monkeypatch.chdir(cwd)
        with pytest.raises(BundleError, match="visual.onnx points at external data"):
            Detector.from_bundle(tiny_bundle_copy, object="bottle", backend="openvino", cache=False)


def test_a_profile_made_on_the_openvino_engine_runs_on_it(ir_copy, line_images, tmp_path):
    """winclip-calibrate and winclip-inspect take the same engine options: a profile made on the int8 IR (with
    OpenVINO's compute precision asked for) is bound to that IR, and the line runs it there."""
    profile = tmp_path / "profile"
    engine = ("--backend", "openvino", "--precision", "int8", "--inference-precision", "f32")
    proc = run_cli("winclip-calibrate", str(ir_copy), "--object", "bottle", "--normal", str(line_images),
                   "--shots", "2", "--out", str(profile), *engine)
    assert proc.returncode == 0, proc.stderr
    ir = next(e for e in _manifest(ir_copy)["engines"] if e.get("format") == "openvino-ir")
    assert ir["file"] in (profile / "profile.json").read_text()
    proc = run_cli("winclip-inspect", str(ir_copy), "--source", str(line_images), "--out", str(tmp_path / "out"),
                   "--profile", str(profile), "--backend", "openvino", "--inference-precision", "f32")
    assert proc.returncode == 0, proc.stderr
    assert "int8 openvino-ir engine" in proc.stderr and "on openvino CPU" in proc.stderr, proc.stderr
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len(events) == len(list(line_images.iterdir())) and all("anomalous" in e for e in events)
