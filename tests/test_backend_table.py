"""A new backend is one file and one row: a fake one from the tests tree runs winclip-inspect end to end."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import line_frames
from winclip.runtime import backends
from winclip.runtime.backends import Row
from winclip.runtime.errors import MissingExtra
from winclip.runtime.contract import ENGINE_FORMATS, FORMAT_ONNX, FORMAT_OPENVINO_IR, engine_file_name


def test_a_backend_from_one_file_and_one_row_runs_inspect(tiny_bundle, tmp_path, monkeypatch):
    import fake_backend
    from winclip.runtime.line.cli import main  # imported before the row exists: its choices are read at run time

    source = tmp_path / "src"
    source.mkdir()
    line_frames(source, 1)
    args = [str(tiny_bundle), "--source", str(source), "--out", str(tmp_path / "out"), "--object", "bottle",
            "--backend", "fake"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "'fake' is not one of" in refused.output

    monkeypatch.setitem(backends.BACKENDS, "fake", Row("fake_backend:FakeBackend"))  # the one row
    assert "fake" in CliRunner().invoke(main, ["--help"]).output
    before = fake_backend.FakeBackend.calls
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "on fake pretend-CPU" in result.output and fake_backend.FakeBackend.calls > before
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len(events) == 2 and all(0 <= e["image_score"] <= 1 for e in events)
    # the same frames on ONNX Runtime score the same: the fake row ran the real engine, not a stand-in
    plain = CliRunner().invoke(main, [*args[:4], str(tmp_path / "ort"), *args[5:7], "--backend", "onnxruntime"])
    assert plain.exit_code == 0, plain.output
    want = [json.loads(line) for line in (tmp_path / "ort" / "events.jsonl").read_text().splitlines()]
    assert np.allclose([e["image_score"] for e in events], [e["image_score"] for e in want], atol=1e-6)


def test_a_missing_library_is_named_only_for_the_backend_chosen(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "fake", Row("winclip_not_installed:Backend", "winclip_not_installed",
                                                       'pip install "winclip-fake"', measured=True))
    assert not backends.installed("fake") and "fake" in backends.measured_backends()
    with pytest.raises(MissingExtra, match=r'^the fake backend needs winclip_not_installed: pip install "winclip-fake"$'):
        backends.backend_class("fake")
    assert backends.backend_class("onnxruntime").name == "onnxruntime"


def test_engine_file_names_come_from_the_format_table():
    assert engine_file_name("fp32") == "visual.onnx" and engine_file_name("int8") == "visual-int8.onnx"
    assert engine_file_name("int8", FORMAT_OPENVINO_IR) == "visual-int8-openvino.xml"
    assert ENGINE_FORMATS[FORMAT_OPENVINO_IR].side_file == ".bin" and ENGINE_FORMATS[FORMAT_ONNX].side_file is None
