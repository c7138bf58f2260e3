"""An engine builder that lives in this one file, to prove that a new builder needs nothing else.

Its engine is the bundle's fp32 graph saved again under a new precision name
("fp32-copy"), with a note of its own option (--copy-note) in the graph's doc
string, so its bytes differ from fp32 and its numbers do not. A test adds
`BUILDER_ROW` to the builders' table and `PRECISION_ROW` to the runtime's
precisions (a new precision name is a runtime fact), then runs
winclip-quantize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from winclip.calibration.engines import Builder
from winclip.runtime.contract import FORMAT_ONNX

PRECISION = "fp32-copy"


@dataclass
class CopySettings:
    note: str = ""

    def check(self, layers: int) -> None:
        pass


class CopyBuilder(Builder):
    """The fp32 graph again, under another precision name; guarded on the CPU like any other engine."""

    backend = "onnxruntime"
    precision = PRECISION
    format = FORMAT_ONNX
    title = "fp32 copy"
    settings_type = CopySettings
    packages = {"onnx": ("onnx",)}
    options = (click.option("--copy-note", default="", help="fp32-copy: a note kept in the copy's graph and record."),)

    def settings(self, values: dict) -> CopySettings:
        return CopySettings(note=values["copy_note"])

    def describe(self, settings: CopySettings) -> str:
        return f"a copy of fp32 ({settings.note or 'no note'})"

    def make(self, fp32: Path, out: Path, settings: CopySettings, frames, input_name: str) -> None:
        import onnx

        model = onnx.load(str(fp32))
        model.doc_string = f"fp32 copy: {settings.note}"
        onnx.save(model, str(out))

    def record(self, settings: CopySettings) -> dict:
        return {"note": settings.note}

    def guard_compute(self) -> str:
        return "f32"  # ONNX Runtime runs an fp32 graph at f32: said in the guard's record


BUILDER = CopyBuilder()
BUILDER_ROW = {(BUILDER.backend, BUILDER.precision): BUILDER}
PRECISION_ROW = {PRECISION: {"cpu": "an fp32 copy (a test's row)"}}
