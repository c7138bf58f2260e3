"""LiveStatus: the counts, rolling latency, FPS and source health behind the status line, page and metrics."""

from __future__ import annotations

import json
import threading

import pytest

from winclip.runtime.line import status as live_status
from winclip.runtime.line.status import LiveStatus


def frame_event(source: str, score: float, anomalous: bool, total_ms: float) -> dict:
    return {"source": source, "frame": 0, "time": 1.0, "image_score": score, "anomalous": anomalous,
            "latency_ms": {"engine": total_ms - 1.0, "total": total_ms}}


def test_counts_latency_and_health():
    status = LiveStatus(["cam0", "cam1"])
    for i in range(100):
        status.record_event(frame_event("cam0", 0.1 * (i % 10), i % 10 >= 8, float(i + 1)))
    status.record_event({"source": "cam1", "frame": 3, "time": 1.0, "error": "corrupt JPEG"})
    status.record_drop("cam1", 7)
    status.set_health("cam0", "ok")
    status.set_health("cam0", "reconnecting", "read timed out")
    status.set_health("cam0", "ok")
    snap = status.snapshot()
    json.dumps(snap, allow_nan=False)  # JSON-ready, strict
    assert (snap["scored"], snap["anomalous"], snap["errors"], snap["dropped"]) == (100, 20, 1, 7)
    assert snap["latency_ms"]["p50"] == pytest.approx(50.5)
    assert snap["latency_ms"]["p95"] == pytest.approx(95.05)
    assert snap["sources"]["cam0"]["losses"] == 1 and snap["sources"]["cam0"]["health"] == "ok"
    assert snap["sources"]["cam1"]["errors"] == 1 and snap["sources"]["cam1"]["scored"] == 0
    line = status.status_line()
    assert "scored 100" in line and "dropped 7" in line and "anomalous 20" in line and "50/95 ms" in line
    with pytest.raises(ValueError, match="health must be one of"):
        status.set_health("cam0", "fine")


def test_latency_window_is_bounded():
    status = LiveStatus(rolling=16)
    for i in range(1000):
        status.record_event(frame_event("cam0", 0.5, False, 1000.0 if i < 990 else 1.0))
    snap = status.snapshot()
    assert snap["latency_ms"]["window"] == 16 and snap["scored"] == 1000
    # only the newest 16 count: 6 of 1000 ms, then 10 of 1 ms
    assert snap["latency_ms"]["p50"] == 1.0 and snap["latency_ms"]["p95"] == 1000.0


def test_fps_falls_when_frames_stop(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(live_status.time, "monotonic", lambda: clock[0])
    status = LiveStatus(["cam0"])
    for _ in range(50):  # 5 frames per second for 10 s
        clock[0] += 0.2
        status.record_event(frame_event("cam0", 0.1, False, 5.0))
    assert status.snapshot()["fps"] == pytest.approx(5.0)
    clock[0] += live_status.FPS_WINDOW_S + 1  # the camera went quiet
    assert status.snapshot()["fps"] == 0.0
    assert "down" not in status.status_line()
    status.set_health("cam0", "lost", "no frame for 5 s")
    assert "down: cam0" in status.status_line()


def test_threads_count_every_event():
    status = LiveStatus()

    def writer(source):
        for _ in range(2000):
            status.record_event(frame_event(source, 0.9, True, 3.0))
            status.record_drop(source)

    threads = [threading.Thread(target=writer, args=(f"cam{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        status.snapshot()  # readers run while the writers write
    snap = status.snapshot()
    assert snap["scored"] == snap["anomalous"] == snap["dropped"] == 8000
