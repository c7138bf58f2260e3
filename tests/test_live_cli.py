"""`winclip-inspect` in live mode, as a process: signals, bad input in one line, and the plant sinks wired in
(a real amqtt broker, the live page), on video files and a live MJPEG stream made from real images."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SCRIPTS, run_cli
from test_live_loop import textile_frames, wait_for, write_video
from winclip.benchmarks.soak_live import MjpegServer


def strict_lines(text: str) -> list[dict]:
    """Every line parsed as strict JSON (NaN / Infinity tokens refused)."""
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def frame_lines(events: list[dict]) -> list[dict]:
    return [e for e in events if "frame" in e]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error")]


class LiveProcess:
    """winclip-inspect running in the background; stderr collected line by line as it comes."""

    def __init__(self, *args: str):
        cmd = [sys.executable, "-m", SCRIPTS["winclip-inspect"], *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.stderr_lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, out, "".join(self.stderr_lines)

    def stop(self, timeout: float = 60) -> tuple[int, str, str]:
        """SIGTERM, as a service manager stops it, then finish()."""
        self.proc.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class FallsSilent:
    """A camera that stays connected but stops sending: on each connection `frames` JPEG parts, then
    nothing, the connection held open until stop(). `connections` counts the GETs."""

    def __init__(self, images, frames: int = 5):
        import cv2

        self.jpegs = [cv2.imencode(".jpg", im)[1].tobytes() for im in images]
        self.frames, self.connections = frames, 0
        self.stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for n in range(owner.frames):
                        data = owner.jpegs[n % len(owner.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                        time.sleep(0.05)
                    owner.stopping.wait(120)  # connected, silent
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cam.mjpg"

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stream():
    server = MjpegServer(textile_frames(), fps=20).start()
    yield server
    server.stop()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_live_run_cleanly(tiny_bundle, stream, tmp_path, signum):
    out = tmp_path / "out"
    run = LiveProcess(str(tiny_bundle), "--source", stream.url, "--out", str(out), "--object", "bottle",
                      "--threshold", "0.0", "--provider", "cpu")
    try:
        log = out / "events.jsonl"
        assert wait_for(lambda: log.exists() and log.read_text().count('"frame"') >= 3, 60), run.stderr_lines
        run.proc.send_signal(signum)
        code, _, stderr = run.finish()
    finally:
        run.kill()
    name = signal.Signals(signum).name
    assert code == 0, stderr
    summary = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert len(summary) == 1 and summary[0].startswith(f"stopped: {name}.") and "Traceback" not in stderr
    events = strict_lines(log.read_text())
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_stopped"
    assert events[-1]["reason"] == name and events[-1]["scored"] == len(frame_lines(events)) >= 3
    assert f"{events[-1]['scored']} scored" in summary[0]
    overlays = sorted((out / "overlays").rglob("*.jpg"))  # threshold 0: every frame anomalous, every overlay whole
    assert len(overlays) == len(frame_lines(events)) and all(p.stat().st_size > 1000 for p in overlays)
    assert not list(out.rglob(".tmp-*"))


def test_a_stream_that_stays_connected_but_sends_nothing_is_lost_after_the_stall_timeout(tiny_bundle, tmp_path):
    camera = FallsSilent(textile_frames(), frames=5)
    log = tmp_path / "events.jsonl"
    run = LiveProcess(str(tiny_bundle), "--source", camera.url, "--events", str(log), "--object", "bottle",
                      "--stall-timeout", "1", "--provider", "cpu")
    try:
        assert wait_for(lambda: log.exists() and log.read_text().count('"source_lost"') >= 2, 90), run.stderr_lines
        code, _, stderr = run.stop()
    finally:
        run.kill()
        camera.stop()
    assert code == 0, stderr
    events = strict_lines(log.read_text())
    lost = [e for e in events if e.get("event") == "source_lost"]
    assert all(e["detail"].startswith("no frame for ") for e in lost), lost  # quiet, not failing reads
    quiet_s = [float(e["detail"].split()[3]) for e in lost]
    assert all(1.0 <= q < 5.0 for q in quiet_s), quiet_s  # --stall-timeout 1, not the default 5 s
    assert camera.connections >= 2 and any(e.get("event") == "source_recovered" for e in events)  # reopened
    assert len(frame_lines(events)) >= 5 and "Traceback" not in stderr


def test_credentials_in_a_stream_url_reach_no_output(tiny_bundle, tmp_path):
    """A user name, a password and a token in the --source URL: not on stderr, in the events, on the live page,
    in /status.json, in /metrics or an overlay's address, through a run whose stream goes away and comes back."""
    user, password, token = "lineop7", "hunter2-Pw", "t0ken-XYZ"
    server = MjpegServer(textile_frames(), fps=20).start()
    url = f"http://{user}:{password}@127.0.0.1:{server.port}/stream.mjpg?token={token}&channel=2"
    log = tmp_path / "events.jsonl"
    run = LiveProcess(str(tiny_bundle), "--source", url, "--object", "bottle", "--threshold", "0.0", "--serve", "0",
                      "--events", str(log), "--stall-timeout", "1", "--provider", "cpu")
    seen = []

    def get(path: str) -> str:
        with urllib.request.urlopen(page + path, timeout=5) as response:
            seen.append(response.read().decode("utf-8", "replace"))
        return seen[-1]

    try:
        assert wait_for(lambda: any("live page: " in line for line in run.stderr_lines), 60), run.stderr_lines
        page = next(line for line in run.stderr_lines if "live page: " in line).split("live page: ")[1].strip()
        assert wait_for(lambda: json.loads(get("status.json"))["scored"] >= 3, 30)
        name = next(iter(json.loads(get("status.json"))["sources"]))
        assert name == f"http://127.0.0.1:{server.port}/stream.mjpg?token=***&channel=2"
        with urllib.request.urlopen(page + "overlay/" + urllib.parse.quote(name, safe="") + ".jpg", timeout=5) as r:
            assert r.read()[:2] == b"\xff\xd8"
        server.stop()  # lost: its reasons go to stderr, the events and the page
        assert wait_for(lambda: log.read_text().count('"source_lost"') >= 1, 30)
        assert wait_for(lambda: json.loads(get("status.json"))["sources"][name]["health"] != "ok", 10)
        server.start()
        assert wait_for(lambda: log.read_text().count('"source_recovered"') >= 1, 30)
        for path in ("", "status.json", "metrics"):
            get(path)
        code, _, stderr = run.stop()
    finally:
        run.kill()
        server.stop()
    assert code == 0, stderr
    assert f'source="{name}"' in seen[-1]  # /metrics, fetched last: its per-source series carry the redacted name
    said = "\n".join([stderr, log.read_text(), *seen])
    assert name in said and "channel=2" in said  # the redacted name is what every output shows
    for secret in (user, password, token):
        assert secret not in said, secret


def test_a_video_to_stdout_with_every_and_max_frames(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "line.avi", textile_frames(5) * 4)
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(video), "--events", "-", "--object", "bottle",
                   "--every", "2", "--max-frames", "4")
    assert proc.returncode == 0, proc.stderr
    events = strict_lines(proc.stdout)
    assert [e["frame"] for e in frame_lines(events)] == [0, 2, 4, 6]
    assert events[-1] == {**events[-1], "event": "run_stopped", "reason": "--max-frames 4 reached", "scored": 4}
    assert "stopped: --max-frames 4 reached. 4 scored" in proc.stderr
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(video), "--source", str(video),
                   "--events", "-", "--object", "bottle")  # two videos to their ends, one batch per round
    assert proc.returncode == 0, proc.stderr
    events = strict_lines(proc.stdout)
    by_source = {}
    for e in frame_lines(events):
        by_source.setdefault(e["source"], []).append(e["frame"])
    assert by_source == {str(video): list(range(20)), f"{video}#2": list(range(20))}
    assert "stopped: every source ended. 40 scored" in proc.stderr


def test_bad_live_input_is_one_line(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "v.avi", textile_frames(2))
    folder = tmp_path / "imgs"
    folder.mkdir()
    runner = CliRunner()
    from winclip.runtime.line.cli import main

    def usage(*args):
        result = runner.invoke(main, [str(tiny_bundle), *args])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(lines) == 1, result.output
        return lines[0]

    v = ["--source", str(video)]
    assert "--every applies to live sources" in usage("--source", str(folder), "--out", "o", "--every", "2")
    assert "--save-maps applies to a folder of images" in usage(*v, "--out", "o", "--save-maps")
    assert "cannot be mixed with other sources" in usage(*v, "--source", str(folder), "--out", "o")
    assert "needs somewhere to put its results" in usage(*v)
    assert "--overlays all saves into OUT/overlays: give --out" in usage(*v, "--events", "-", "--overlays", "all")
    assert "--host needs --serve" in usage(*v, "--events", "-", "--host", "0.0.0.0")
    assert "--mqtt-topic needs --mqtt" in usage(*v, "--events", "-", "--mqtt-topic", "t")
    assert "without a scheme" in usage(*v, "--events", "-", "--mqtt", "mqtt://broker")
    assert "http:// or https://" in usage(*v, "--events", "-", "--webhook", "ftp://x")
    assert "--events names the same place twice" in usage(*v, "--events", "-", "--events", "-")
    assert "--out is required for a folder" in usage("--source", str(folder))

    def fails(*args, code=1):
        proc = run_cli("winclip-inspect", str(tiny_bundle), "--object", "bottle", *args)
        assert proc.returncode == code and "Traceback" not in proc.stderr and "WARN" not in proc.stderr, proc.stderr
        errors = error_lines(proc.stderr)
        assert len(errors) == 1, proc.stderr
        return errors[0]

    assert "2 --roi for 1 --source" in fails(*v, "--events", "-", "--roi", "0,0,5,5", "--roi", "0,0,5,5")
    from winclip.runtime.line.sources import gstreamer

    with pytest.MonkeyPatch.context() as patch:  # in-process: the same whatever this OpenCV was built with
        patch.setattr(gstreamer, "has_gstreamer", lambda: False)
        result = runner.invoke(main, [str(tiny_bundle), "--object", "bottle", "--events", "-",
                                      "--source", "videotestsrc ! videoconvert ! appsink"])
    errors = error_lines(result.output)
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "looks like a GStreamer pipeline, but this OpenCV was built without GStreamer" in errors[0]
    assert "source not found" in fails("--source", str(tmp_path / "gone.mp4"), "--events", "-")
    message = fails("--source", "99", "--events", "-")
    assert message == ("Error: cannot open camera:99 after 3 attempts: no such device, or it is in use; "
                       "--wait-for-source keeps trying")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = fails("--source", f"rtsp://lineop7:hunter2-Pw@127.0.0.1:{port}/line1?token=t0ken-XYZ", "--events", "-")
    assert "Connection refused" in refused and f"rtsp://127.0.0.1:{port}/line1?token=***" in refused
    assert not any(secret in refused for secret in ("lineop7", "hunter2-Pw", "t0ken-XYZ")), refused
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "already in use" in fails(*v, "--serve", str(taken.getsockname()[1]))
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--object", "bottle", "--source", "99", "--events", "-",
                   "--wait-for-source", "--duration", "2")
    assert proc.returncode == 0 and "stopped: --duration 2 s reached. 0 scored" in proc.stderr, proc.stderr
    lost = [e for e in strict_lines(proc.stdout) if e.get("event") == "source_lost"]
    assert len(lost) == 1 and "not available at start" in lost[0]["detail"]


def test_a_broker_that_is_down_never_stalls_scoring(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "v.avi", textile_frames(4) * 5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--object", "bottle", "--source", str(video), "--events", "-",
                   "--mqtt", f"127.0.0.1:{port}")
    assert proc.returncode == 0, proc.stderr
    assert len(frame_lines(strict_lines(proc.stdout))) == 20 and "stopped: every source ended. 20 scored" in proc.stderr
    assert time.monotonic() - started < 45


def test_mqtt_and_the_live_page_on_a_live_stream(tiny_bundle, stream, tmp_path):
    from test_live_sinks import TOPIC, Subscriber, ThreadedBroker, free_port

    broker = ThreadedBroker(free_port()).start()
    subscriber = Subscriber(broker.port)
    run = LiveProcess(str(tiny_bundle), "--source", stream.url, "--object", "bottle", "--threshold", "0.0",
                      "--mqtt", f"127.0.0.1:{broker.port}", "--mqtt-topic", TOPIC, "--serve", "0",
                      "--events", str(tmp_path / "events.jsonl"))
    try:
        assert wait_for(lambda: any("live page: " in line for line in run.stderr_lines), 60), run.stderr_lines
        url = next(line for line in run.stderr_lines if "live page: " in line).split("live page: ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert wait_for(lambda: len(frame_lines(subscriber.received)) >= 5, 30)

        def status():
            with urllib.request.urlopen(url + "status.json", timeout=5) as response:
                return json.loads(response.read())

        assert wait_for(lambda: status()["scored"] >= 5 and status()["sources"][stream.url]["has_overlay"], 20)
        with urllib.request.urlopen(url + "metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "winclip" in metrics
        code, _, stderr = run.stop()
    finally:
        run.kill()
        subscriber.close()
        broker.close()
    assert code == 0, stderr
    written = frame_lines(strict_lines((tmp_path / "events.jsonl").read_text()))
    published = frame_lines(subscriber.received)
    assert published and {(e["source"], e["frame"]) for e in published} <= {(e["source"], e["frame"]) for e in written}
    assert all(e["anomalous"] is True for e in published)
    assert any(e.get("event") == "run_started" for e in subscriber.received)


def test_a_webhook_gets_exactly_the_anomalous_events(tiny_bundle, tmp_path):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np

    from test_live_loop import decoded_frames
    from winclip.runtime import Detector

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    video = write_video(tmp_path / "v.avi", textile_frames(6) * 2)
    detector = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    threshold = float(np.median([detector(f)[0].image_score for f in decoded_frames(video)]))
    try:
        proc = run_cli("winclip-inspect", str(tiny_bundle), "--object", "bottle", "--source", str(video),
                       "--events", "-", "--threshold", repr(threshold),
                       "--webhook", f"http://127.0.0.1:{server.server_address[1]}/hook")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    frames = frame_lines(strict_lines(proc.stdout))
    anomalous = [e["frame"] for e in frames if e["anomalous"]]
    assert len(frames) == 12 and 0 < len(anomalous) < 12
    assert sorted(e["frame"] for e in received) == anomalous


def test_a_glob_of_images_is_batch_mode(tiny_bundle, tmp_path):
    import cv2

    from conftest import read, textile_images

    src = tmp_path / "parts"
    (src / "line2").mkdir(parents=True)
    images = [read(p) for p in textile_images("local", 3)]
    for i, image in enumerate(images):
        cv2.imwrite(str(src / ("line2" if i == 2 else ".") / f"part{i}.png"), image)
    cv2.imwrite(str(src / "part9.jpg"), images[0])  # not matched by *.png
    out = tmp_path / "out"
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(src / "**" / "*.png"), "--out", str(out),
                   "--object", "bottle", "--save-maps")
    assert proc.returncode == 0, proc.stderr
    events = strict_lines((out / "events.jsonl").read_text())
    assert sorted(Path(e["source"]).name for e in events) == ["part0.png", "part1.png", "part2.png"]
    assert (out / "maps" / "line2__part2.npy").exists()  # names relative to the pattern's fixed folder
    assert "3 scored, 0 errors" in proc.stderr
