"""What the runtime keeps in memory, held structurally (counts and sizes, never timings).

- Building a few-shot memory of K normals runs the engine one batch at a time and
  reduces each batch to the memory's vectors before the next runs: no two calls'
  window outputs are alive at once, whatever K is.
- Opening an engine never holds its bytes whole in Python: the engine is streamed
  through the hash (and into a private copy onnxruntime reads), one chunk at a time.
"""

from __future__ import annotations

import tracemalloc
import weakref

import numpy as np
import pytest

from conftest import read, textile_images
from test_live_loop import BackendSpy
from winclip.runtime import Detector
from winclip.runtime.backends import BackendOptions, open_backend
from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import window_output_name
from winclip.runtime.memory import FewShotMemory


class OutputsSpy(BackendSpy):
    """BackendSpy (batch sizes) that also counts, as each call starts, how many of the window
    outputs earlier calls returned are still alive."""

    def __init__(self, detector):
        super().__init__(detector)
        self.alive_at_call: list[int] = []
        self._returned: list[weakref.ref] = []

    def run(self, batch):
        self.alive_at_call.append(sum(ref() is not None for ref in self._returned))
        outputs = super().run(batch)
        windows = [window_output_name(k) for k in self.detector.bundle.manifest.scales]
        self._returned += [weakref.ref(outputs[name]) for name in windows]
        return outputs


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threads=1, cache=False)


@pytest.fixture(scope="module")
def normals():
    return [read(p) for p in textile_images("nominal", 5)]


@pytest.mark.parametrize("batch_size, sizes", [(None, [1, 1, 1, 1, 1]), (2, [2, 2, 1])])
def test_building_a_memory_never_holds_two_batches_of_window_outputs(detector, normals, batch_size, sizes):
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    with OutputsSpy(detector) as spy:
        memory = detector.build_memory(iter(normals), **kwargs)  # a lazy iterable is enough
    assert spy.batch_sizes == sizes
    assert spy.alive_at_call == [0] * len(sizes), spy.alive_at_call
    assert memory.shots == len(normals) and detector.memory is memory

    # the same vectors as a memory made from all K frames' outputs at once
    outputs, _ = detector.embed(normals)
    whole = FewShotMemory.from_outputs(outputs, detector.memory_key)
    for k in detector.bundle.manifest.scales:
        assert memory.windows[k].shape == whole.windows[k].shape
        np.testing.assert_allclose(memory.windows[k], whole.windows[k], atol=1e-5)
    np.testing.assert_allclose(memory.patches, whole.patches, atol=1e-5)


def test_a_memory_needs_a_normal_frame(detector):
    with pytest.raises(ValueError, match="at least one normal image"):
        detector.build_memory([])
    with pytest.raises(ValueError, match="batch_size"):
        detector.build_memory([np.zeros((8, 8), np.uint8)], batch_size=0)


@pytest.mark.parametrize("cache", ["off", "cold", "warm"])
def test_opening_an_engine_never_holds_its_bytes(tiny_bundle, tmp_path, monkeypatch, cache):
    """Python's own allocations while a backend opens stay far below the engine's size."""
    monkeypatch.setattr("winclip.runtime.bundle.STREAM_CHUNK", 16 << 10)
    bundle = Bundle.load(tiny_bundle)
    size = (tiny_bundle / bundle.engine("fp32").file).stat().st_size
    options = BackendOptions(device="cpu", cache=cache != "off", cache_dir=tmp_path / "cache")
    # untraced first: the imports and one-time set-up a first backend brings, and for "warm" the cache
    open_backend(bundle, options=options if cache == "warm" else BackendOptions(device="cpu", cache=False)).close()
    tracemalloc.start()
    try:
        backend = open_backend(bundle, options=options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 20 * (16 << 10) and peak < size / 4, (peak, size)
    assert backend.run(np.zeros((1, 3, *bundle.manifest.preprocess.input_size), np.float32))
    assert not list(tmp_path.glob("cache/.engine-*"))  # the private copy is gone


def test_without_room_for_a_copy_the_checked_bytes_load(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
    bundle = Bundle.load(tiny_bundle)
    backend = open_backend(bundle, options=BackendOptions(device="cpu", cache=False))
    outputs = backend.run(np.zeros((1, 3, *bundle.manifest.preprocess.input_size), np.float32))
    backend.check_outputs(outputs, bundle.manifest, 1)


def test_bench_memory_settings_rows_name_the_runtime(tiny_bundle, tmp_path):
    """`bench_memory --parts settings` measures every ONNX Runtime setting row in processes of its own,
    and one row is exactly the runtime's own session options (so the table compares against what runs)."""
    import json

    from click.testing import CliRunner

    from winclip.benchmarks import bench_memory

    for precision in ("fp32", "int8"):
        assert bench_memory.runtime_setting(precision) in bench_memory.SETTINGS
    frames = sorted(textile_images("nominal", 2))
    images = tmp_path / "frames"
    images.mkdir()
    for p in frames:
        (images / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "settings.json"
    result = CliRunner().invoke(bench_memory.main, [str(tiny_bundle), "--precision", "fp32", "--parts", "settings",
                                                    "--frames", "2", "--rounds", "1", "--images", str(images),
                                                    "--shots", "0", "--json", str(out), "--md", str(tmp_path / "s.md")])
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert set(settings["rows"]) == set(bench_memory.SETTINGS)
    assert settings["runtime"] == bench_memory.runtime_setting("fp32")
    for name, row in settings["rows"].items():
        assert row["frames_peak_mib"] >= row["session_rss_mib"] > 0, name
        assert row["frame_p50_ms"] > 0, name
    assert settings["rows"]["onnxruntime's defaults"]["vs_defaults"] == 1.0
    assert "(the runtime's)" in (tmp_path / "s.md").read_text()
