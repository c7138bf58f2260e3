"""winclip-bench runs every configuration and writes well-formed results (not how fast anything is)."""

import json

from conftest import TINY_CONFIG, run_cli
from winclip.runtime.backends import default_backend


def test_bench_writes_a_table_and_json(tiny_bundle, tmp_path):
    out = tmp_path / "bench"
    # no --object: the bundle holds two, and both sides must score the first
    proc = run_cli("winclip-bench", str(tiny_bundle), "--shots", "0,2", "--batch", "1,2",
                   "--frames", "2", "--warmup", "0", "--compare-torch", "--model-config", str(TINY_CONFIG),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text().strip() == proc.stdout.strip()
    assert len(result["rows"]) == 4 and len(result["torch"]) == 4
    assert result["machine"]["cores"] >= 1 and result["gemm_peak_gflops"]["numpy_fp32"] > 0
    assert result["frame_gflop"] > 0 and result["work_elimination"] is True
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["precision"] == "fp32" and row["timed_frames"] == 2
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["fps"] > 0 and row["cold_start_s"] > 0
        assert set(row["stages_ms"]) == {"preprocess", "engine", "scoring", "upsample"}
        assert row["peak_rss_mib"] > 50 and row["engine_mib"] > 0 and row["gflops"] > 0
        # peak resident memory per stage, each no higher than the run's
        stages = ["load", "first frame", *(["memory build"] if row["shots"] else []), "steady state"]
        assert list(row["peak_mib"]) == stages
        assert all(50 < v <= row["peak_rss_mib"] for v in row["peak_mib"].values()), row["peak_mib"]
        assert row["speedup_vs_fp32"] == 1.0 and row["speedup_vs_torch"] > 0
    for row in result["torch"]:
        assert "error" not in row, row
        assert row["p50_ms"] > 0
    header = [line for line in proc.stdout.splitlines() if line.startswith("| engine |")]
    assert len(header) == 2 and header[1].endswith("| load | first frame | memory build | steady state | whole run |")
    # the default backend: auto where ONNX Runtime and OpenVINO are both installed (its rows say so)
    label = "fp32" if default_backend() == "onnxruntime" else f"{default_backend()} fp32"
    assert {row["backend"] for row in result["rows"]} == {default_backend()}
    assert len([line for line in proc.stdout.splitlines() if line.startswith(f"| {label} |")]) == 4 + 4


def test_bench_refuses_what_it_cannot_measure(tiny_bundle):
    proc = run_cli("winclip-bench", str(tiny_bundle), "--precision", "int8")
    assert proc.returncode != 0 and "no int8 engine" in proc.stderr and "winclip-quantize" in proc.stderr
    proc = run_cli("winclip-bench", str(tiny_bundle), "--batch", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
