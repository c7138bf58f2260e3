"""Fuzz suite: a stranger's bundle, a hostile image or an odd path never runs unchecked bytes,
passes a bad part, crashes the process or loses work.

Each case asserts its outcome: a one-line error naming the field or file (and a non-zero exit), or an
error event with the run going on; never a traceback, never a NaN passed as a decision.
"""

import copy
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import read, run_cli, textile_images
from winclip.runtime import Detector
from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import Manifest
from winclip.runtime.errors import BundleError
from winclip.runtime.validation import SchemaError


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def _write(bundle, manifest):
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _rehash(bundle, m, name):
    digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    for e in m["engines"]:
        if e["file"] == name:
            e["sha256"] = digest
    for o in m["text"]["objects"].values():
        if o["file"] == name:
            o["sha256"] = digest


def _strict_events(out):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in (out / "events.jsonl").read_text().splitlines()]


# ---- 4. manifests with wrong types or absurd values: one line naming the field
MUTATIONS = [
    ("grid is one number", lambda m: m.update(grid=[5]), "grid must have 2..2 entries"),
    ("grid float", lambda m: m.update(grid=[5, 5.0]), r"grid\[1\] must be an integer, got a number"),
    ("grid bool", lambda m: m.update(grid=[True, 5]), r"grid\[0\] must be an integer, got a boolean"),
    ("grid huge", lambda m: m.update(grid=[10 ** 40, 5]), r"grid\[0\] is 1000+\.\.\., outside"),
    ("duplicate scales", lambda m: m["windows"].update(scales=[2, 2]), "repeats a scale"),
    ("scale too big", lambda m: m["windows"].update(scales=[2, 9], counts={"2": 16, "9": 0}), "does not fit the 5x5"),
    ("stride float", lambda m: m["windows"].update(stride=2.5), "windows.stride must be an integer"),
    ("temperature null", lambda m: m["scoring"].update(temperature=None), "scoring.temperature must be a number, got null"),
    ("temperature zero", lambda m: m["scoring"].update(temperature=0), r"scoring.temperature is 0.0, outside \(0.0"),
    ("std zero", lambda m: m["preprocess"].update(std=[0, 1, 1]), r"preprocess.std\[0\] is 0.0, outside \(0.0"),
    ("input size rank", lambda m: m["preprocess"].update(input_size=[80, 80, 3]), "input_size must have 2..2"),
    ("resize policy", lambda m: m["preprocess"].update(resize="crop"), "preprocess.resize is 'crop'"),
    ("embed width", lambda m: m["dims"].update(embed=31), "io.outputs .* disagrees"),
    ("patch layer", lambda m: m["patch_features"].update(layer=3), r"patch_features.layer is 3, outside 1..2"),
    ("long file name", lambda m: m["engines"][0].update(file="a" * 5000 + ".onnx"), "is too long"),
    ("file escapes", lambda m: m["engines"][0].update(file="../visual.onnx"), "not a plain relative path"),
    ("absolute text", lambda m: m["text"]["objects"]["bottle"].update(file="/etc/passwd"), "not a plain relative path"),
    ("bad sha", lambda m: m["engines"][0].update(sha256="../../cache/x"), "engines\\[0\\].sha256 is not a sha256"),
    ("no engines", lambda m: m.update(engines=[]), "engines must have 1..8 entries"),
    ("unknown precision", lambda m: m["engines"][0].update(precision="int4"), "engines\\[0\\].precision is 'int4'"),
    ("two fp32", lambda m: m["engines"].append(dict(m["engines"][0], file="x.onnx")), "lists a precision twice"),
    ("no objects", lambda m: m["text"].update(objects={}), "must name 1..4096 objects"),
    ("object not a dict", lambda m: m["text"].update(objects=["bottle"]), "text.objects must be an object, got a list"),
    ("not an object", lambda m: m.clear() or m.update(format="winclip-edge-bundle", schema_version=2, grid="x"),
     "missing field|must be"),
]


@pytest.mark.parametrize("name,mutate,message", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_manifest_mutations_are_refused_naming_the_field(tiny_bundle_copy, name, mutate, message):
    m = _manifest(tiny_bundle_copy)
    mutate(m)
    _write(tiny_bundle_copy, m)
    with pytest.raises(BundleError, match=message):
        Bundle.load(tiny_bundle_copy)


@pytest.mark.parametrize("text,message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"format": "winclip-edge-bundle", "schema_version": 2, "scoring": {"temperature": NaN}}',
     "field scoring.temperature is NaN, which is not a JSON number"),
    ('{"format": "winclip-edge-bundle", "schema_version": 2, "x": 1e999}', "field x is Infinity, which is not a JSON number"),
    ("[1, 2, 3]", "not a winclip-edge-bundle manifest|must be an object"),
    ("\xff\xfe garbage", "not valid JSON"),
])
def test_unparseable_manifests(tiny_bundle_copy, text, message):
    (tiny_bundle_copy / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str)
                                                     else text)
    with pytest.raises(BundleError, match=message):
        Bundle.load(tiny_bundle_copy)


def test_a_huge_manifest_is_not_read(tiny_bundle_copy):
    m = _manifest(tiny_bundle_copy)
    m["versions"] = {"padding": "x" * (5 << 20)}
    _write(tiny_bundle_copy, m)
    with pytest.raises(BundleError, match="bytes, more than the"):
        Bundle.load(tiny_bundle_copy)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def valid_manifest(tiny_bundle):
    return _manifest(tiny_bundle)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_the_loader_accepts_or_refuses_with_schema_error(valid_manifest, data):
    """Any leaf or branch replaced by any JSON value: a Manifest or a SchemaError, nothing else."""
    m = copy.deepcopy(valid_manifest)
    paths = [p for p in _paths(m) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = m
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = data.draw(JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    try:
        result = Manifest.from_json(m)
    except SchemaError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(result, Manifest)


# ---- files of a bundle
def _npy_header(shape, dtype="<f4"):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@pytest.mark.parametrize("content,message", [
    (_npy_header((10 ** 12, 32)) + b"\0" * 120, r"has shape \(1000000000000, 32\): expected \(2, 32\)"),
    (_npy_header((2, 32)) + b"\0" * 120, "holds 120 data bytes, its header promises 256"),
    (_npy_header((2, 32), "<i8") + b"\0" * 512, "holds int64 data"),
    (_npy_header((2, 32)) + b"\0" * 256, "zero, NaN or infinite prototype"),
    (b"\x93NUMPY\x01\x00\xff\xff{'descr'", "is not a readable .npy array"),
])
def test_hostile_text_arrays(tiny_bundle_copy, content, message):
    (tiny_bundle_copy / "text" / "bottle.npy").write_bytes(content)
    m = _manifest(tiny_bundle_copy)
    _rehash(tiny_bundle_copy, m, "text/bottle.npy")
    _write(tiny_bundle_copy, m)
    with pytest.raises(BundleError, match=message):
        Bundle.load(tiny_bundle_copy)


def test_a_text_file_that_is_a_folder(tiny_bundle_copy):
    (tiny_bundle_copy / "text" / "bottle.npy").unlink()
    (tiny_bundle_copy / "text" / "bottle.npy").mkdir()
    with pytest.raises(BundleError, match="bundle file missing: text/bottle.npy"):
        Bundle.load(tiny_bundle_copy)


def test_garbage_graph_bytes_with_a_matching_checksum(tiny_bundle_copy):
    (tiny_bundle_copy / "visual.onnx").write_bytes(os.urandom(4096))
    m = _manifest(tiny_bundle_copy)
    _rehash(tiny_bundle_copy, m, "visual.onnx")
    _write(tiny_bundle_copy, m)
    with pytest.raises(BundleError, match="visual.onnx (is not a well-formed ONNX model|.*cannot load)"):
        Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)


def test_a_graph_that_outputs_nan_is_refused_by_the_self_check(tiny_bundle_copy):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_bundle_copy / "visual.onnx"))
    for init in model.graph.initializer:
        if init.name.endswith("proj") or init.name == "visual.proj":
            arr = numpy_helper.to_array(init).copy()
            arr[0, 0] = np.nan
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            break
    else:
        pytest.fail("no projection initialiser found")
    onnx.save(model, str(tiny_bundle_copy / "visual.onnx"))
    m = _manifest(tiny_bundle_copy)
    _rehash(tiny_bundle_copy, m, "visual.onnx")
    _write(tiny_bundle_copy, m)
    with pytest.raises(BundleError, match="self-check failed: image_embedding is not finite"):
        Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", cache=False)


def test_broken_bundles_from_the_command_line_are_one_line(tiny_bundle_copy, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), read(textile_images("local", 1)[0]))
    original = _manifest(tiny_bundle_copy)
    for mutate, message in ((lambda m: m.update(grid=[5, 5.5]), "grid[1] must be an integer"),
                            (lambda m: m["engines"][0].update(file="x" * 3000), "is too long")):
        m = copy.deepcopy(original)
        mutate(m)
        _write(tiny_bundle_copy, m)
        proc = run_cli("winclip-inspect", str(tiny_bundle_copy), "--source", str(src), "--out", str(tmp_path / "o"),
                       "--object", "bottle")
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
        assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


# ---- 7. the Python API
def test_text_arrays_are_read_once_from_checked_bytes(tiny_bundle_copy):
    bundle = Bundle.load(tiny_bundle_copy)
    before = bundle.text_prototypes("bottle")
    np.save(tiny_bundle_copy / "text" / "bottle.npy", np.ones((2, 32), np.float32))  # replaced after the check
    np.testing.assert_array_equal(bundle.text_prototypes("bottle"), before)
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.load(tiny_bundle_copy)


def test_cache_names_come_from_hashes_only_even_without_checksums(tiny_bundle_copy, tmp_path):
    import re

    m = _manifest(tiny_bundle_copy)
    m["engines"][0]["sha256"] = "0" * 64  # wrong, but checksums are switched off below
    _write(tiny_bundle_copy, m)
    cache = tmp_path / "cache"
    bundle = Bundle.load(tiny_bundle_copy, verify_checksums=False)
    det = Detector(bundle, object_name="bottle", provider="cpu", cache_dir=cache)
    actual = hashlib.sha256((tiny_bundle_copy / "visual.onnx").read_bytes()).hexdigest()
    names = sorted(p.name for p in cache.iterdir())
    assert any(n.startswith(actual) for n in names) and not any(n.startswith("0" * 64) for n in names)
    assert all(re.fullmatch(r"([0-9a-f]{64}-ort[\w.]+)|(selfcheck-[0-9a-f]{64}\.ok)", n) for n in names), names
    assert det(np.zeros((30, 30, 3), np.uint8))[0].anomaly_map.shape == (30, 30)


# ---- 2, 5, 6. hostile images and odd paths in a run
def _png_bomb(path, width, height):
    """A valid 8-bit gray PNG of width x height zeros: tiny on disk, huge decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _peak_rss_mib(code: str) -> float:
    """Run code in a fresh interpreter; its own peak resident memory in MiB."""
    script = textwrap.dedent(code) + "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def test_decompression_bombs_and_extreme_strips_stay_small(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb, 20000, 20000)
    assert bomb.stat().st_size < 2 << 20
    baseline = _peak_rss_mib("import numpy, cv2, winclip.runtime.images")
    peak = _peak_rss_mib(f"""
        from winclip.runtime.images import ImageReadError, read_image
        try:
            read_image({str(bomb)!r})
            raise SystemExit("decoded")
        except ImageReadError as exc:
            assert "20000x20000 pixels, more than the 50000000 allowed" in str(exc), exc
    """)
    assert peak - baseline < 50, (baseline, peak)
    strip = _peak_rss_mib("""
        import numpy as np
        from winclip.runtime.preprocess import resize_frame
        out = resize_frame(np.full((1, 1_000_000, 3), 200, np.uint8), (240, 240))
        assert out.shape == (3, 240, 240) and abs(float(out.mean()) - 200 / 255) < 1e-4
    """)
    assert strip - baseline < 150, (baseline, strip)  # the input alone is 3 MB; a dense resize took 3 GB


# the pixel cap, from every header the reader parses
_W, _H = 123, 77  # not square: a reader that swaps width and height is caught too
_PIXELS = (np.random.default_rng(5).random((_H, _W, 3)) * 255).astype(np.uint8)


_GRAY = _PIXELS[..., 1].copy()
_BGRA = np.dstack([_PIXELS, np.full((_H, _W), 200, np.uint8)])


def _encoded(ext: str, image: np.ndarray = _PIXELS, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return data.tobytes()


HEADERS = {  # every layout header_size reads, as OpenCV writes it (and PNM with a comment, as cameras write it)
    "png": lambda: _encoded(".png"),
    "jpeg baseline": lambda: _encoded(".jpg"),
    "jpeg progressive": lambda: _encoded(".jpg", _PIXELS, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "bmp": lambda: _encoded(".bmp"),
    "webp lossy (VP8)": lambda: _encoded(".webp", _PIXELS, cv2.IMWRITE_WEBP_QUALITY, 80),
    "webp lossless (VP8L)": lambda: _encoded(".webp", _PIXELS, cv2.IMWRITE_WEBP_QUALITY, 101),
    "webp with alpha (VP8X)": lambda: _encoded(".webp", _BGRA, cv2.IMWRITE_WEBP_QUALITY, 80),
    "tiff": lambda: _encoded(".tiff"),
    "tiff gray": lambda: _encoded(".tiff", _GRAY),
    "pgm (P5)": lambda: _encoded(".pgm", _GRAY),
    "pgm ascii (P2)": lambda: _encoded(".pgm", _GRAY, cv2.IMWRITE_PXM_BINARY, 0),
    "ppm (P6)": lambda: _encoded(".ppm"),
    "pbm (P4)": lambda: _encoded(".pbm", _GRAY),
    "pam (P7)": lambda: _encoded(".pam"),
    "pgm with a comment": lambda: b"P5\n# camera 3, line 2\n%d %d\n255\n" % (_W, _H) + _GRAY.tobytes(),
}


@pytest.mark.parametrize("layout", list(HEADERS))
def test_the_pixel_cap_is_read_from_the_header_to_the_exact_pixel(layout, monkeypatch):
    from winclip.runtime import images

    data = HEADERS[layout]()
    assert images.header_size(data) == (_W, _H)
    assert images.decode_image(data, "part", limit=_W * _H).shape[:2] == (_H, _W)  # exactly at the cap: read

    def no_decoding(*args):
        raise AssertionError("decoded although the header is over the cap")

    monkeypatch.setattr(images.cv2, "imdecode", no_decoding)
    with pytest.raises(images.ImageReadError, match=rf"^part is {_W}x{_H} pixels, more than the {_W * _H - 1} "
                                                    r"allowed \(WINCLIP_MAX_PIXELS or --max-pixels raises the cap\)$"):
        images.decode_image(data, "part", limit=_W * _H - 1)  # one pixel over: refused before decoding


def _tiff_claiming(width: int, height: int, order: str) -> bytes:
    """A TIFF header and first directory that claim width x height (width a LONG, height a SHORT), no pixels."""
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    entries = struct.pack(order + "HHI", 256, 4, 1) + struct.pack(order + "I", width)
    entries += struct.pack(order + "HHI", 257, 3, 1) + struct.pack(order + "H", height) + b"\0\0"
    return mark + struct.pack(order + "I", 8) + struct.pack(order + "H", 2) + entries + struct.pack(order + "I", 0)


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_tiff_directory_that_claims_too_many_pixels_is_refused_unread(order, monkeypatch):
    from winclip.runtime import images

    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    bomb = _tiff_claiming(20000, 20000, order)
    assert images.header_size(bomb) == (20000, 20000)
    with pytest.raises(images.ImageReadError, match="20000x20000 pixels, more than the 50000000 allowed"):
        images.decode_image(bomb, "bomb.tiff")


@pytest.mark.parametrize("header", [b"P7\nHEIGHT 77\nDEPTH 1\nMAXVAL 255\nENDHDR\n", b"P5\n123\n", b"BM\0\0",
                                    b"RIFF\0\0\0\0WEBPVP8Z", _tiff_claiming(10, 10, "<")[:20]])
def test_a_truncated_or_incomplete_header_is_a_corrupt_image(header):
    from winclip.runtime import images

    with pytest.raises(images.ImageReadError, match="^cannot decode part: corrupt image header$"):
        images.decode_image(header + bytes(16), "part")


def test_max_pixels_and_winclip_max_pixels(tiny_bundle, tmp_path, monkeypatch):
    from winclip.runtime.defaults import MAX_IMAGE_PIXELS
    from winclip.runtime.images import max_pixels

    for value, cap in (("62499", 62499), ("", MAX_IMAGE_PIXELS), ("0", MAX_IMAGE_PIXELS), ("-5", MAX_IMAGE_PIXELS),
                       ("lots", MAX_IMAGE_PIXELS)):
        monkeypatch.setenv("WINCLIP_MAX_PIXELS", value)
        assert max_pixels() == cap, value
    monkeypatch.delenv("WINCLIP_MAX_PIXELS")
    src = tmp_path / "parts"
    src.mkdir()
    part = read(textile_images("local", 1)[0])
    assert part.shape[:2] == (250, 250)  # 62,500 pixels
    cv2.imwrite(str(src / "whole.png"), part)
    cv2.imwrite(str(src / "crop.png"), part[:150, :200])  # 30,000 pixels

    def run(name, *args, env=None):
        proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src), "--out", str(tmp_path / name),
                       "--object", "bottle", *args, env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return {os.path.basename(e["source"]): e for e in _strict_events(tmp_path / name)}

    for events in (run("option", "--max-pixels", "62499"), run("env", env={"WINCLIP_MAX_PIXELS": "62499"})):
        assert "more than the 62499 allowed" in events["whole.png"].get("error", ""), events
        assert "image_score" in events["crop.png"]
    events = run("both", "--max-pixels", "62500", env={"WINCLIP_MAX_PIXELS": "62499"})  # the option wins
    assert all("image_score" in e for e in events.values()) and len(events) == 2


def test_a_run_survives_hostile_images_and_odd_names(tiny_bundle, tmp_path):
    src = tmp_path / "src"
    (src / "deep" / ("d" * 200)).mkdir(parents=True)
    good = read(textile_images("local", 1)[0])
    cv2.imwrite(str(src / "x.png"), good)
    cv2.imwrite(str(src / ".tmp-x.png"), cv2.flip(good, 1))  # the old temporary-name scheme's collision
    raw_name = os.fsencode(str(src)) + b"/caf\xe9-\xff.png"  # not valid UTF-8
    with open(raw_name, "wb") as fh:
        fh.write(cv2.imencode(".png", good)[1].tobytes())
    cv2.imwrite(str(src / "deep" / ("d" * 200) / ("n" * 200 + ".png")), good)
    _png_bomb(src / "bomb.png", 20000, 20000)
    nan_image = np.full((40, 40), np.nan, np.float32)
    cv2.imwrite(str(src / "nan.tiff"), nan_image)
    (src / "truncated.png").write_bytes(cv2.imencode(".png", good)[1].tobytes()[:200])
    out = tmp_path / "out"
    (out).mkdir()
    (out / "events.jsonl.partial").write_text('{"left": "by an interrupted run"}\n')
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src), "--out", str(out), "--object", "bottle",
                   "--save-maps", "--save-overlays", "--threshold", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "an interrupted run's events were kept as" in proc.stderr
    assert (out / "events.jsonl.partial.1").read_text() == '{"left": "by an interrupted run"}\n'
    events = _strict_events(out)
    by_source = {os.path.basename(e["source"]): e for e in events}
    assert "pixels, more than the" in by_source["bomb.png"]["error"]
    assert "NaN or infinite" in by_source["nan.tiff"]["error"] and "anomalous" not in by_source["nan.tiff"]
    assert "cannot decode" in by_source["truncated.png"]["error"]
    odd = next(e for e in events if "caf" in e["source"])
    assert "\ufffd" in odd["source"] and os.path.exists(odd["overlay"]) and os.path.exists(odd["map"])
    long_one = next(e for e in events if "nnnn" in e["source"])
    assert all(len(part.encode()) <= 255 for part in long_one["map"].split("/"))
    # x.png and .tmp-x.png keep their own, intact maps
    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    for name, image in (("x.png", good), (".tmp-x.png", cv2.flip(good, 1))):
        saved = np.load(by_source[name]["map"], allow_pickle=False)
        np.testing.assert_allclose(saved, det(image)[0].anomaly_map, atol=1e-6)
    assert len({by_source["x.png"]["map"], by_source[".tmp-x.png"]["map"]}) == 2
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert "4 scored, 3 errors" in proc.stderr


def test_an_unreadable_sub_folder_is_reported(tmp_path, monkeypatch):
    from winclip.runtime import images
    from winclip.runtime.line.frames import FolderSource

    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    cv2.imwrite(str(tmp_path / "ok" / "a.png"), np.zeros((8, 8), np.uint8))
    real_walk = os.walk

    def walk(top, onerror=None):  # root reads every folder: the refusal is simulated where os.walk reports it
        for entry in real_walk(top, onerror=onerror):
            if entry[0].endswith("locked"):
                onerror(PermissionError(13, "Permission denied", entry[0]))
                continue
            yield entry

    monkeypatch.setattr(images.os, "walk", walk)
    frames = list(FolderSource(tmp_path))
    errors = [f for f in frames if f.error]
    assert len(errors) == 1 and "cannot read folder" in errors[0].error and "locked" in errors[0].error
    assert [f.source.endswith("a.png") for f in frames if f.error is None] == [True]


def test_output_folder_problems_and_all_failed_runs(tiny_bundle, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "also.jpg").write_bytes(b"nope")
    as_file = tmp_path / "file"
    as_file.write_text("I am a file")
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src), "--out", str(as_file), "--object", "bottle")
    assert proc.returncode == 1 and "cannot write to" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src), "--out", str(tmp_path / "o"),
                   "--object", "bottle")
    assert proc.returncode == 1 and "no image could be scored (2 errors)" in proc.stderr
    assert len(_strict_events(tmp_path / "o")) == 2  # the run's events are complete and kept
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src), "--out", str(tmp_path / "o2"),
                   "--object", "bottle", "--threshold", "nan")
    assert proc.returncode == 2 and "threshold must be a number in [0, 1]" in proc.stderr


def test_non_finite_scores_never_pass(tiny_bundle_copy):
    """A frame whose engine output turns non-finite is a FrameError, never a pass."""
    from winclip.runtime.detector import FrameError

    det = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", threshold=0.5)
    run = det.backend.run
    det.backend.run = lambda batch: {name: np.full_like(o, np.nan) for name, o in run(batch).items()}
    with pytest.raises(FrameError, match="not a finite number"):
        det(np.zeros((20, 20, 3), np.uint8))
