"""Loading a bundle: everything is checked, anything odd is refused with one line."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import run_cli
from winclip.runtime import Detector
from winclip.runtime.bundle import Bundle, BundleError


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_loads_and_lists_objects(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    assert b.objects == ["bottle", "metal nut"] and b.manifest.grid == (5, 5) and b.manifest.scales == (2, 3)
    assert b.text_prototypes("metal_nut").shape == (2, 32)
    assert b.manifest.precisions == ["fp32"] and b.manifest.window_counts == {2: 16, 3: 9}


def test_unknown_object_lists_the_known_ones(tiny_bundle):
    with pytest.raises(BundleError, match="no text embeddings for object 'screw'; it has: 'bottle', 'metal nut'"):
        Bundle.load(tiny_bundle).text_prototypes("screw")


def test_checksum_mismatch(tiny_bundle_copy):
    with open(tiny_bundle_copy / "text" / "bottle.npy", "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x00\x00\x80\x7f")
    with pytest.raises(BundleError, match="checksum mismatch for bundle file text/bottle.npy"):
        Bundle.load(tiny_bundle_copy)


def test_unknown_schema_version(tiny_bundle_copy):
    _edit_manifest(tiny_bundle_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema version 99 is not supported"):
        Bundle.load(tiny_bundle_copy)


def test_missing_file(tiny_bundle_copy):
    (tiny_bundle_copy / "visual.onnx").unlink()
    with pytest.raises(BundleError, match="bundle file missing: visual.onnx"):
        Bundle.load(tiny_bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "text/../../x.npy"])
def test_file_names_may_not_leave_the_bundle(tiny_bundle_copy, name):
    _edit_manifest(tiny_bundle_copy, lambda m: m["engines"][0].update(file=name))
    with pytest.raises(BundleError, match="not a plain relative path|outside"):
        Bundle.load(tiny_bundle_copy)


def test_symlink_out_of_the_bundle_is_refused(tiny_bundle_copy, tmp_path):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((2, 32), np.float32))
    target = tiny_bundle_copy / "text" / "bottle.npy"
    target.unlink()
    target.symlink_to(secret)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(tiny_bundle_copy)


def test_pickled_text_embeddings_are_never_unpickled(tiny_bundle_copy):
    import hashlib

    path = tiny_bundle_copy / "text" / "bottle.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _edit_manifest(tiny_bundle_copy, lambda m: m["text"]["objects"]["bottle"].update(sha256=digest))
    with pytest.raises(BundleError, match="text embeddings text/bottle.npy holds object data"):
        Bundle.load(tiny_bundle_copy)


def test_manifest_that_disagrees_with_the_graph(tiny_bundle_copy):
    """A manifest consistent in itself (one scale) over a graph with two: refused at session creation."""
    def one_scale(m):
        m["windows"].update(scales=[2], counts={"2": 16})
        del m["io"]["outputs"]["window_embeddings_3"]

    _edit_manifest(tiny_bundle_copy, one_scale)
    Bundle.load(tiny_bundle_copy)  # the manifest alone is fine
    with pytest.raises(BundleError, match="disagree with the graph"):
        Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)


def test_schema_version_1_bundles_are_still_read(tiny_bundle_copy, tiny_bundle):
    """Bundles written before engines were listed load as a single fp32 engine."""
    def to_v1(m):
        engine = m.pop("engines")[0]
        objects = m["text"]["objects"]
        m["files"] = {engine["file"]: engine["sha256"], **{o["file"]: o["sha256"] for o in objects.values()}}
        m["text"]["objects"] = {name: o["file"] for name, o in objects.items()}
        m["graph"] = {"file": engine["file"], "precision": "fp32", "opset": 17, "exporter": "torchscript",
                      **m.pop("io")}
        m["verification"] = engine["verification"]
        m["schema_version"] = 1

    _edit_manifest(tiny_bundle_copy, to_v1)
    old = Bundle.load(tiny_bundle_copy)
    assert old.manifest.precisions == ["fp32"] and old.manifest.engine("fp32").verification
    frame = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    a = Detector(old, object_name="bottle", provider="cpu", cache=False)(frame)[0]
    b = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", cache=False)(frame)[0]
    assert a.image_score == b.image_score


def test_cuda_without_the_gpu_build_is_a_clear_error(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BundleError, match=r'pip install "\.\[gpu\]"'):
        Detector.from_bundle(tiny_bundle, object="bottle", provider="cuda")


def test_optimised_graph_is_cached_for_the_next_start(tiny_bundle_copy, tmp_path):
    cache = tmp_path / "cache"
    before = sorted(p.relative_to(tiny_bundle_copy) for p in tiny_bundle_copy.rglob("*"))
    Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache_dir=cache)
    cached = list(cache.glob("*/graph.onnx"))  # a folder per engine: the graph, its weights beside it
    assert len(cached) == 1 and cached[0].stat().st_size > 0
    assert sorted(p.name for p in cached[0].parent.iterdir()) == ["graph.onnx", "graph.onnx.data"]
    # the cache is the user's, never the bundle's: nothing is written into the bundle
    assert sorted(p.relative_to(tiny_bundle_copy) for p in tiny_bundle_copy.rglob("*")) == before
    inode, content = cached[0].stat().st_ino, cached[0].read_bytes()
    det = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache_dir=cache)
    assert (cached[0].stat().st_ino, cached[0].read_bytes()) == (inode, content)  # reused, not rewritten
    assert det(np.zeros((90, 90, 3), np.uint8))[0].anomaly_map.shape == (90, 90)
    # --no-cache's path: neither read nor written
    cached[0].unlink()
    Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False, cache_dir=cache)
    assert not list(cache.glob("*/graph.onnx"))
    # an entry with a part missing is replaced
    Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache_dir=cache)
    cached = list(cache.glob("*/graph.onnx"))
    assert len(cached) == 1
    # a broken cache file is dropped, the checked graph runs, and the entry is rebuilt
    cached[0].write_bytes(b"garbage")
    det = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache_dir=cache)
    assert det(np.zeros((90, 90, 3), np.uint8))[0].anomaly_map.shape == (90, 90)
    assert cached[0].stat().st_size > 100
    assert not list(cache.glob(".*"))  # no temporary copy or half-written entry left behind


def test_graph_with_external_data_is_refused(tiny_bundle_copy, tmp_path, monkeypatch):
    """ONNX external-data references could read files elsewhere: the runtime loads checked bytes only."""
    import hashlib

    import onnx

    graph = tiny_bundle_copy / "visual.onnx"
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    _edit_manifest(tiny_bundle_copy, lambda m: m["engines"][0].update(sha256=digest))
    for cwd in (tmp_path, tiny_bundle_copy):  # whatever the working directory, weights.bin never loads
        monkeypatch.chdir(cwd)
        with pytest.raises(BundleError, match="visual.onnx points at external data"):
            Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)


@pytest.mark.parametrize("drop", [("engines",), ("text", "objects"), ("windows",), ("scoring", "temperature")])
def test_manifest_missing_fields_are_refused(tiny_bundle_copy, drop):
    def remove(m):
        node = m
        for key in drop[:-1]:
            node = node[key]
        del node[drop[-1]]

    _edit_manifest(tiny_bundle_copy, remove)
    with pytest.raises(BundleError, match="missing field " + ".".join(drop)):
        Bundle.load(tiny_bundle_copy)


def test_manifest_window_count_must_match_the_graph(tiny_bundle_copy):
    _edit_manifest(tiny_bundle_copy, lambda m: m["windows"]["counts"].update({"3": 10}))
    with pytest.raises(BundleError, match="windows.counts .* disagrees with the grid and scales"):
        Bundle.load(tiny_bundle_copy)


def test_runtime_never_imports_torch(tiny_bundle, tmp_path):
    """Invariant 1, checked in a clean interpreter that has torch installed."""
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys, numpy as np
        import winclip.runtime, winclip.calibration
        from winclip.runtime import Detector
        for package in (winclip.runtime, winclip.calibration):  # every module of the edge side
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
        det = Detector.from_bundle({str(tiny_bundle)!r}, object="bottle", provider="cpu", cache=False)
        det.build_memory([np.zeros((64, 64), np.uint8)])
        det(np.zeros((64, 64, 3), np.uint8))
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision"))
        print("LEAKED", bad)
        sys.exit(1 if bad else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inspect_refuses_a_broken_bundle_in_one_line(tiny_bundle_copy, tmp_path):
    _edit_manifest(tiny_bundle_copy, lambda m: m.update(schema_version=99))
    src = tmp_path / "src"
    src.mkdir()
    import cv2

    cv2.imwrite(str(src / "a.png"), np.zeros((10, 10), np.uint8))
    proc = run_cli("winclip-inspect", str(tiny_bundle_copy), "--source", str(src), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "schema version 99" in proc.stderr and "Traceback" not in proc.stderr
