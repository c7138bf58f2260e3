"""Nothing lost without a word, nothing misleading (issue 20): sink losses counted and flushed, webhook alerts
retried, a second signal that still leaves whole JSON lines, bounded overlays and cache, honest calibration
output, evaluation that can fail a CI job, RTSP transport that composes with the user's options."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import elpv_images, import_blocker, read, run_cli, textile_images
from test_live_cli import LiveProcess, error_lines, frame_lines, strict_lines
from test_live_loop import paint_defect, textile_frames, wait_for, write_video
from winclip.benchmarks.soak_live import MjpegServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- sinks: every loss counted, in the summary and in run_stopped
def test_a_broker_down_for_the_whole_run_is_counted_not_silent(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "v.avi", textile_frames(4) * 3)
    port = free_port()  # nothing listens
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(video), "--object", "bottle", "--events", "-",
                   "--mqtt", f"127.0.0.1:{port}", "--flush-timeout", "1")
    assert proc.returncode == 0, proc.stderr
    events = strict_lines(proc.stdout)
    stopped = events[-1]
    assert stopped["event"] == "run_stopped" and set(stopped["sinks"]) == {"stdout", f"MQTT 127.0.0.1:{port}"}
    mqtt = stopped["sinks"][f"MQTT 127.0.0.1:{port}"]
    assert mqtt["delivered"] == 0 and mqtt["queued"] == len(events) - 1  # run_started + every frame, all waiting
    summary = next(line for line in proc.stderr.splitlines() if line.startswith("stopped:"))
    assert f"MQTT 127.0.0.1:{port}: 0 delivered, {len(events)} failed" in summary, summary
    assert f"stdout: {len(events)} delivered" in summary


class Receiver:
    """A webhook receiver that answers `code_for(attempt)` (1-based) to each POST and keeps what it accepted (2xx)."""

    def __init__(self, code_for):
        self.code_for, self.accepted, self.attempts = code_for, [], 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                code = receiver.code_for(receiver.attempts)
                if 200 <= code < 300:
                    receiver.accepted.append(json.loads(body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def quick_retries(monkeypatch):
    from winclip.runtime.line import defaults

    monkeypatch.setattr(defaults, "WEBHOOK_RETRY_S", (0.05, 0.2))


def test_failed_webhook_alerts_are_retried_not_dropped(caplog, quick_retries):
    from winclip.runtime.line.sinks.webhook import WebhookSink

    caplog.set_level(logging.WARNING, logger="winclip")
    receiver = Receiver(lambda attempt: 500 if attempt <= 5 else 200)
    try:
        sink = WebhookSink(receiver.url, timeout=1.0)
        alerts = [{"source": "cam", "frame": i, "anomalous": True} for i in range(8)]
        for alert in alerts:
            sink.write(alert)
        assert wait_for(lambda: len(receiver.accepted) == 8, 30), receiver.attempts
        sink.close(timeout=2.0)
    finally:
        receiver.close()
    assert receiver.accepted == alerts  # every alert, once, in order
    assert sink.stats() == {"delivered": 8, "dropped": 0, "failed": 0, "queued": 0}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one warning for the outage, one when it answers again, with the count
    assert "HTTP 500" in lines[0] and "retried with backoff" in lines[0] and "after 5 failed attempt(s)" in lines[1]


def test_a_flapping_receiver_is_one_warning_not_a_pair_per_flap(caplog):
    from winclip.runtime.line.sinks.base import QueuedSink

    caplog.set_level(logging.WARNING, logger="winclip")
    sink = QueuedSink(None)
    for _ in range(15):  # fail, recover, fail, recover ... within seconds
        sink._outage("peer failed")
        sink._recovered("peer back")
    assert [r.getMessage() for r in caplog.records] == ["peer failed", "peer back after 1 failed attempt(s)"]


def test_a_webhook_that_refuses_an_alert_is_not_retried_forever(quick_retries):
    from winclip.runtime.line.sinks.webhook import WebhookSink

    receiver = Receiver(lambda attempt: 400)  # "bad request": sending it again cannot help
    try:
        sink = WebhookSink(receiver.url, timeout=1.0)
        sink.write({"frame": 1, "anomalous": True})
        assert wait_for(lambda: sink.stats()["failed"] == 1, 10)
        sink.close(timeout=1.0)
    finally:
        receiver.close()
    assert sink.stats() == {"delivered": 0, "dropped": 0, "failed": 1, "queued": 0} and receiver.attempts == 1


# ---- signals: the first finishes cleanly, the second exits at once with whole lines
@pytest.fixture
def stream():
    server = MjpegServer(textile_frames(), fps=20).start()
    yield server
    server.stop()


def test_a_second_signal_exits_at_once_and_leaves_whole_json_lines(tiny_bundle, stream, tmp_path):
    out = tmp_path / "out"
    port = free_port()  # a broker that is down: closing would wait --flush-timeout for it
    run = LiveProcess(str(tiny_bundle), "--source", stream.url, "--out", str(out), "--object", "bottle",
                      "--provider", "cpu", "--mqtt", f"127.0.0.1:{port}", "--flush-timeout", "30")
    try:
        log = out / "events.jsonl"
        assert wait_for(lambda: log.exists() and log.read_text().count('"frame"') >= 3, 60), run.stderr_lines
        run.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: '"run_stopped"' in log.read_text(), 30)  # the first signal: a clean stop...
        started = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)  # ...while the MQTT sink still waits for its broker
        code, _, stderr = run.finish(timeout=20)
    finally:
        run.kill()
    assert code == 128 + signal.SIGTERM and time.monotonic() - started < 10, stderr
    assert "SIGTERM again: exiting now; the events written so far are whole lines" in stderr
    events = strict_lines(log.read_text())  # every line whole, strict JSON
    assert events[-1]["event"] == "run_stopped" and events[-1]["reason"] == "SIGTERM"


def test_a_signal_in_folder_mode_finishes_the_batch_and_says_so(tiny_bundle, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    images = textile_images("nominal", 50)
    for i in range(1000):  # long enough to be stopped half way
        os.symlink(images[i % 50], folder / f"{i:04d}.jpg")
    out = tmp_path / "out"
    run = LiveProcess(str(tiny_bundle), "--source", str(folder), "--out", str(out), "--object", "bottle",
                      "--provider", "cpu", "--threads", "1")
    try:
        partial = out / "events.jsonl.partial"
        assert wait_for(lambda: partial.exists() and partial.read_text().count("\n") >= 2, 60), run.stderr_lines
        code, _, stderr = run.stop()
    finally:
        run.kill()
    errors = error_lines(stderr)
    assert code == 1 and len(errors) == 1 and "stopped by SIGTERM after" in errors[0] and "of 1000 images" in errors[0]
    assert (out / "events.jsonl").exists() and not partial.exists()
    events = strict_lines((out / "events.jsonl").read_text())
    assert 2 <= len(events) < 1000 and f"after {len(events)} of 1000 images" in errors[0]


# ---- bounded overlays and cache
def _fake_overlays(folder: Path, days: list[str], per_day: int, size: int) -> None:
    for day in days:
        d = folder / "camera_0" / day
        d.mkdir(parents=True)
        for i in range(per_day):
            (d / f"0900{i:02d}_000-{i}.jpg").write_bytes(b"x" * size)


def test_overlays_are_pruned_by_age_and_size_oldest_first(tmp_path):
    from winclip.runtime.line.retention import OverlayRetention

    folder = tmp_path / "overlays"
    _fake_overlays(folder, ["20261120", "20261121", "20261122"], per_day=10, size=1000)
    now = time.time()
    for i, day in enumerate(["20261120", "20261121", "20261122"]):  # 12, 11 and 10 days old
        for f in (folder / "camera_0" / day).iterdir():
            os.utime(f, (now - (12 - i) * 86400, now - (12 - i) * 86400))
    retention = OverlayRetention(folder, keep_days=11.5, keep_bytes=None)
    assert retention.total == 30_000
    assert retention.prune(now) == (10, 10_000) and not (folder / "camera_0" / "20261120").exists()
    retention = OverlayRetention(folder, keep_days=None, keep_bytes=15_000)
    assert retention.prune(now) == (5, 5_000)
    left = sorted(p.name for p in (folder / "camera_0").rglob("*.jpg"))
    assert len(left) == 15 and not (folder / "camera_0" / "20261121" / "090000_000-0.jpg").exists()
    assert (folder / "camera_0" / "20261122" / "090000_000-0.jpg").exists()  # the newest day untouched


def test_a_live_run_keeps_its_overlays_under_keep_gb(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "v.avi", textile_frames(6) * 40)  # 240 frames, every one saved
    out = tmp_path / "out"
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(video), "--object", "bottle", "--out",
                   str(out), "--overlays", "all", "--keep-gb", "0.001")  # ~1 MB: a fraction of the run's overlays
    assert proc.returncode == 0, proc.stderr
    sizes = [p.stat().st_size for p in (out / "overlays").rglob("*.jpg")]
    assert 0 < sum(sizes) <= 0.001 * 2**30 + 100 * max(sizes), sum(sizes)  # pruned every 100 saves
    assert len(sizes) < 240 and "removed" in proc.stderr and "saved overlays" in proc.stderr


def test_the_graph_cache_is_bounded_least_recently_used_first(tmp_path):
    from winclip.runtime.cache import prune_cache

    now = time.time()
    for i in range(5):
        path = tmp_path / f"graph-{i}.onnx"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - 100 + i, now - 100 + i))  # graph-0 used longest ago
    entry = tmp_path / "engine-5-ort"  # a cache entry may be a folder (an optimised graph with its weights)
    entry.mkdir()
    (entry / "graph.onnx").write_bytes(b"x" * 400)
    (entry / "graph.onnx.data").write_bytes(b"x" * 600)
    os.utime(entry, (now - 200, now - 200))  # used before all the others
    keep = tmp_path / "graph-0.onnx"
    assert prune_cache(tmp_path, keep=keep, limit=2500) == 4000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph-0.onnx", "graph-4.onnx"]


# ---- calibration says what is true
def _normals(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i, p in enumerate(textile_images("nominal", n)):
        shutil.copy(p, folder / f"{i:02d}.jpg")
    return folder


def test_a_reference_folder_is_not_a_defect_kind(tiny_bundle, tmp_path):
    from winclip.calibration.evaluation.data import prepare

    data = tmp_path / "real"
    prepare(data, ("textile",), per_class=6, references=4, seed=0)
    assert (data / "textile" / "reference").is_dir()
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--normal",
                   str(_normals(tmp_path / "normals", 12)), "--labelled", str(data / "textile"), "--out",
                   str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert record["labelled"]["defect_kinds"] == ["global", "local"] and record["labelled"]["good"] == 6
    assert record["labelled"]["defect"] == 12 and "6 good, 12 defect" in proc.stdout


def test_calibration_never_claims_a_rate_it_cannot_resolve(tiny_bundle, tmp_path):
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--object", "bottle", "--normal",
                   str(_normals(tmp_path / "normals", 22)), "--shots", "2", "--false-alarm-rate", "0.01",
                   "--out", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    assert "20 held-out normals cannot resolve a 1.00% false-alarm rate" in proc.stderr
    assert "expected false alarms: below about 50 per 1,000 good parts (20 held-out normals cannot say more)" \
        in proc.stdout and "0.0 per 1,000" not in proc.stdout
    picture = cv2.imread(str(tmp_path / "p" / "histogram.png"))
    assert picture.shape == (600, 800, 3)  # two panels: image scores and pixel-map maxima, each with its threshold


def test_a_profile_for_another_engine_names_it_and_the_fix(tiny_bundle_copy, tmp_path):
    from winclip.calibration.engines.build import add_engine
    from winclip.calibration.engines.guard import GuardLimits
    from winclip.runtime import Detector
    from winclip.runtime.profiles.profile import ProfileError

    add_engine(tiny_bundle_copy, "int8", _normals(tmp_path / "frames", 8), limits=GuardLimits(0.0, 0.0, 0.0))
    det = Detector.from_bundle(tiny_bundle_copy, object="bottle", provider="cpu", precision="fp32", threshold=0.5)
    det.build_memory([read(p) for p in textile_images("nominal", 2)])
    profile = det.to_profile().save(tmp_path / "line3")
    with pytest.raises(ProfileError, match=r"line3 was made with the fp32 engine visual.onnx, and runs only with it: "
                                           r"drop --precision int8"):
        Detector.from_bundle(tiny_bundle_copy, profile=profile, provider="cpu", precision="int8")
    chosen = Detector.from_bundle(tiny_bundle_copy, profile=profile, provider="cpu")
    assert chosen.engine.precision == "fp32" and "(chosen by the line profile)" in chosen.describe()
    assert "asked for" not in chosen.describe()


def test_a_null_threshold_is_warned_at_every_load(tiny_bundle, tmp_path, caplog):
    from winclip.runtime import Detector
    from winclip.runtime.profiles.profile import LineProfile

    det = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=0.5, pixel_threshold=0.5)
    det.build_memory([read(p) for p in textile_images("nominal", 2)])
    root = det.to_profile().save(tmp_path / "p")
    record = json.loads((root / "profile.json").read_text())
    record["thresholds"]["image"]["value"] = None
    (root / "profile.json").write_text(json.dumps(record))
    for _ in range(2):
        caplog.clear()
        assert LineProfile.load(root).image_threshold is None
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "no image threshold" in warned[0] and "no frame is ever judged anomalous" \
            in warned[0]
    record["thresholds"]["image"]["value"] = float("nan")
    (root / "profile.json").write_text(json.dumps(record))
    from winclip.runtime.profiles.profile import ProfileError

    with pytest.raises(ProfileError) as exc:
        LineProfile.load(root)
    message = str(exc.value)
    assert "field thresholds.image.value is NaN, which is not a JSON number" in message
    assert message.count("profile.json") == 1


# ---- evaluation a CI job can trust
def test_eval_strict_fails_an_incomplete_run_and_names_the_skipped_files(tiny_bundle, tmp_path):
    from winclip.calibration.evaluation.data import prepare

    data = tmp_path / "real"
    prepare(data, ("textile",), per_class=4, references=2, seed=0)
    (data / "textile" / "local" / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["winclip-eval", str(tiny_bundle), "--dataset", str(data), "--object", "textile=bottle", "--shots", "0"]
    loose = run_cli(*args, "--out", str(tmp_path / "e1"))
    strict = run_cli(*args, "--strict", "--out", str(tmp_path / "e2"))
    assert loose.returncode == 0 and strict.returncode == 3, strict.stderr
    for proc, folder in ((loose, "e1"), (strict, "e2")):
        assert "broken.jpg" in proc.stderr and "INCOMPLETE" in proc.stderr
        assert "broken.jpg" in (tmp_path / folder / "results.md").read_text()


def test_eval_without_scikit_learn_stops_before_any_work(tiny_bundle, tmp_path):
    block = (import_blocker(("sklearn",)) +
             "import runpy; runpy.run_module('winclip.calibration.evaluation.cli', run_name='__main__')\n")
    import subprocess
    import sys

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", block, str(tiny_bundle), "--dataset", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'pip install ".[eval]"' in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 60


def test_bench_without_onnxruntime_is_one_line(tiny_bundle):
    import subprocess
    import sys

    block = (import_blocker(("onnxruntime",)) +
             "import runpy; runpy.run_module('winclip.benchmarks.bench_cli', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", block, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(error_lines(proc.stderr)) == 1
    assert 'onnxruntime backend needs onnxruntime: pip install ".[cpu]"' in proc.stderr


# ---- RTSP transport, composed with what the user set
def test_rtsp_transport_composes_with_the_users_ffmpeg_options(monkeypatch):
    from winclip.runtime.line.sources.stream import FFMPEG_OPTIONS, set_rtsp_transport

    monkeypatch.delenv(FFMPEG_OPTIONS, raising=False)
    assert set_rtsp_transport("tcp") == "rtsp_transport;tcp"
    monkeypatch.setenv(FFMPEG_OPTIONS, "stimeout;5000000|rtsp_transport;udp|max_delay;500000")
    assert set_rtsp_transport("tcp") == "stimeout;5000000|max_delay;500000|rtsp_transport;tcp"
    assert os.environ[FFMPEG_OPTIONS].endswith("rtsp_transport;tcp")
    with pytest.raises(ValueError):
        set_rtsp_transport("http")


def test_video_frames_carry_their_position_not_an_age(tiny_bundle, tmp_path):
    frames = [paint_defect(f) if i % 3 == 0 else f for i, f in enumerate(textile_frames(6))]
    video = write_video(tmp_path / "v.avi", frames, fps=5.0)
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(video), "--object", "bottle", "--events", "-")
    assert proc.returncode == 0, proc.stderr
    scored = frame_lines(strict_lines(proc.stdout))
    assert [e["position_s"] for e in scored] == [i / 5.0 for i in range(6)]
    assert not any("age_ms" in e for e in scored) and all(e["time"] > 1.7e9 for e in scored)


def test_elpv_frames_read(tmp_path):
    """The data the tests above rely on is there (a missing dev extra must fail here, loudly)."""
    assert read(elpv_images(1)[0]).shape == (300, 300)
    assert np.asarray(textile_frames(1)[0]).ndim == 3
