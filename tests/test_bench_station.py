"""bench_station runs both arms to the end of their videos and its ratios are the figures it measured (not how
fast or small anything is)."""

import json
import statistics
import subprocess
import sys


def test_bench_station_measures_both_arms(tiny_bundle, tmp_path):
    out_json, out_md = tmp_path / "station.json", tmp_path / "station.md"
    proc = subprocess.run([sys.executable, "-m", "winclip.benchmarks.bench_station", str(tiny_bundle),
                           "--precision", "fp32", "--threads", "1", "--cameras", "2", "--frames", "3",
                           "--rounds", "1", "--json", str(out_json), "--md", str(out_md)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert out_md.read_text().strip() == proc.stdout.strip()
    assert result["frames_per_camera"] == [3, 3] and result["part"] == "zero-shot 'bottle'"
    (row,) = result["rounds"]
    station, singles = row["station"], row["singles"]
    for arm, processes in ((station, 1), (singles, 2)):
        assert "warning" not in arm and arm["frames"] == 6 and arm["errors"] == 0
        assert len(arm["peak_rss_mib"]) == processes and all(p > 50 for p in arm["peak_rss_mib"])
        assert arm["peak_sum_mib"] == sum(arm["peak_rss_mib"])
        assert 0 < arm["span_s"] < arm["wall_s"] and arm["fps"] == arm["frames"] / arm["span_s"]
        # sampled together, never above the sum of each one's own peak
        assert 0 < arm["sampled_sum_peak_mib"] <= arm["peak_sum_mib"] + 1
    ratios = result["summary"]["ratios"]
    assert ratios["memory_vs_one_single"] == station["peak_sum_mib"] / statistics.median(singles["peak_rss_mib"])
    assert ratios["memory_vs_singles_sum"] == station["peak_sum_mib"] / singles["peak_sum_mib"]
    assert ratios["fps_vs_singles"] == station["fps"] / singles["fps"]
    assert result["summary"]["goals"]["memory_vs_one_single <= 1.3"] == (ratios["memory_vs_one_single"] <= 1.3)
    assert result["machine"]["cpu_features"] is not None and result["versions"]["opencv"]


def test_bench_station_refuses_a_profile_count_that_fits_no_camera(tiny_bundle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "winclip.benchmarks.bench_station", str(tiny_bundle),
                           "--precision", "fp32", "--profile", str(tmp_path), "--profile", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "one per camera (3)" in proc.stderr and "Traceback" not in proc.stderr
