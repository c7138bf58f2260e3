"""winclip-bench puts backends side by side, names the CPU and its ISA, and skips anomalib where it is absent."""

import json

from conftest import needs_openvino, run_cli
from winclip.runtime import cpu


def test_bench_rows_per_backend_with_the_cpu(tiny_bundle, tmp_path):
    needs_openvino()
    out = tmp_path / "bench"
    missing = tmp_path / "no-anomalib-python"
    missing.write_text("#!/bin/sh\nexit 1\n")
    missing.chmod(0o755)
    proc = run_cli("winclip-bench", str(tiny_bundle), "--backend", "onnxruntime,openvino", "--shots", "0",
                   "--frames", "2", "--warmup", "0", "--compare-anomalib", "--anomalib-python", str(missing),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "bench.json").read_text())
    assert [(r["backend"], r["precision"]) for r in result["rows"]] == [("onnxruntime", "fp32"), ("openvino", "fp32")]
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["p50_ms"] > 0 and row["engine_mib"] > 0
    ov_row = result["rows"][1]
    assert ov_row["providers"] == ["CPU"] and ov_row["speedup_vs_fp32"] > 0  # against ONNX Runtime's fp32
    this = cpu.current()
    assert result["machine"]["cpu"] == this.model and result["machine"]["cpu_features"] == this.reported_flags
    # the class of CPU first, on stderr as the run starts and atop the table: every number belongs to it
    assert proc.stderr.splitlines()[0] == this.headline() == proc.stdout.splitlines()[0]
    assert result["machine"]["cpu_class"] == this.isa_class and this.isa_class in this.headline()
    machine = proc.stdout.splitlines()[2]
    assert machine.startswith("machine: ") and "ISA: " in machine and "int8 dot product: " in machine
    assert any(line.startswith("| openvino fp32 |") for line in proc.stdout.splitlines())
    assert any(line.startswith("| fp32 |") for line in proc.stdout.splitlines())
    assert result["anomalib"] == [] and "skipped: anomalib is not installed" in result["anomalib_note"]
    assert "skipped: anomalib is not installed" in proc.stderr and "skipped" in proc.stdout
