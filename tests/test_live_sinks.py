"""The live loop's plant sinks and live page against real peers: an amqtt broker, HTTP receivers, HTTP clients.

The broker runs in this process on its own asyncio loop and thread (amqtt's Broker API), on a
free port of 127.0.0.1, so nothing beyond the [dev] extra is needed.
"""

from __future__ import annotations

import asyncio
import json
import re
import logging
import math
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from amqtt.broker import Broker
from prometheus_client.parser import text_string_to_metric_families
from winclip.runtime.line.server import LiveServer
from winclip.runtime.line.status import LiveStatus
from winclip.runtime.errors import MissingExtra
from winclip.runtime.line.sinks.base import parse_host_port
from winclip.runtime.line.sinks.mqtt import MqttSink
from winclip.runtime.line.sinks.webhook import WebhookSink

TOPIC = "winclip/test/events"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def event(frame: int, anomalous: bool = False, source: str = "cam0") -> dict:
    return {"source": source, "frame": frame, "time": 1764556800.0 + frame / 10, "age_ms": 40.1,
            "image_score": 0.71 if anomalous else 0.2, "anomalous": anomalous, "threshold": 0.6,
            "regions": [{"x": 3, "y": 4, "w": 10, "h": 12, "score": 0.8}] if anomalous else [],
            "latency_ms": {"preprocess": 3.0, "engine": 50.0, "total": 60.0 + frame % 7}}


def write_cost(sink, events: list[dict], chunks: int = 5) -> float:
    """How many times longer `sink.write` takes than serialising the same events (the least a write must do),
    measured side by side in interleaved chunks; the median, so a moment of load on a busy box that falls
    on one chunk does not decide. A write that waited on its peer costs hundreds of times more."""
    size = len(events) // chunks
    ratios = []
    for c in range(chunks):
        part = events[c * size:(c + 1) * size]
        started = time.perf_counter()
        for e in part:
            json.dumps(e, allow_nan=False, separators=(",", ":"))
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        for e in part:
            sink.write(e)
        ratios.append((time.perf_counter() - started) / baseline)
    return statistics.median(ratios)


def sink_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("winclip.runtime.line.sinks")]


# --- real peers
class ThreadedBroker:
    """An amqtt broker on 127.0.0.1:port, served by its own event loop on a daemon thread."""

    def __init__(self, port: int, allow_anonymous: bool = True):
        self.port = port
        self.config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                       "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                                   {"allow_anonymous": allow_anonymous}}}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.broker = None

    def start(self) -> ThreadedBroker:
        self.thread.start()

        async def started():
            broker = Broker(self.config)
            await broker.start()
            return broker

        self.broker = asyncio.run_coroutine_threadsafe(started(), self.loop).result(10)
        return self

    def close(self) -> None:
        if self.broker is not None:
            asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Subscriber:
    """A paho client subscribed to TOPIC with QoS 1, collecting decoded payloads."""

    def __init__(self, port: int):
        self.received: list[dict] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}")
        self.client.on_connect = lambda client, *_: client.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.received.append(json.loads(message.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber could not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker():
    running = ThreadedBroker(free_port()).start()
    yield running
    running.close()


@pytest.fixture
def stopper():
    """Closes whatever the test registers, even when it fails halfway."""
    things = []
    yield things.append
    for thing in reversed(things):
        thing.close()


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver; the server's `mode` says how it answers."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        if self.server.mode == "slow":
            self.server.release.wait(5)  # far longer than the sink's timeout
        code = 500 if self.server.mode == "error" else 204
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    servers = []

    def start(mode: str = "ok") -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        server.daemon_threads = True
        server.mode, server.received, server.release = mode, [], threading.Event()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


# --- addresses
@pytest.mark.parametrize("text, expected", [
    ("broker", ("broker", 1883)), ("broker.local:1884", ("broker.local", 1884)), (" 10.0.0.5:2000 ", ("10.0.0.5", 2000)),
    ("[::1]:1884", ("::1", 1884)), ("[fe80::1]", ("fe80::1", 1883)),
])
def test_parse_host_port_accepts(text, expected):
    assert parse_host_port(text, 1883) == expected


@pytest.mark.parametrize("text, complaint", [
    ("", "empty"), ("broker:", "port must be a number"), ("broker:abc", "port must be a number"),
    ("broker:70000", "1 to 65535"), ("::1", "in brackets"), ("[::1", "missing ']'"), ("[::1]1884", "':PORT'"),
    ("[nothost]:1", "not an IPv6"), ("mqtt://broker:1883", "without a scheme"), (":1883", "not a host"),
])
def test_parse_host_port_rejects_with_a_reason(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_host_port(text, 1883)


def test_modules_import_without_the_live_extra(monkeypatch):
    proc = subprocess.run([sys.executable, "-c", (
        "import sys, winclip.runtime.line.sinks, winclip.runtime.line.server; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paho', 'prometheus_client', 'torch')))")],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingExtra, match=r'pip install "\.\[live\]"'):
        MqttSink("127.0.0.1", free_port())
    with pytest.raises(MissingExtra, match=r'pip install "\.\[live\]"'):
        LiveServer(LiveStatus())


# --- MQTT
def test_mqtt_delivers_every_event(broker, stopper):
    subscriber = Subscriber(broker.port)
    stopper(subscriber)
    status = LiveStatus()
    sink = MqttSink("127.0.0.1", broker.port, topic=TOPIC, status=status, client_id="winclip-test")
    events = [event(i, anomalous=i % 3 == 0) for i in range(200)]
    for e in events:
        sink.write(e)
    sink.write(event(200) | {"image_score": math.nan})  # not strict JSON: counted, not raised, not sent
    assert wait_until(lambda: len(subscriber.received) >= 200), f"{len(subscriber.received)} of 200 arrived"
    sink.close()
    assert subscriber.received == events
    assert (sink.published, sink.dropped, sink.failed) == (200, 0, 1)
    assert status.snapshot()["sink_errors"] == {"mqtt": 1}


def test_mqtt_broker_down_never_stalls_the_caller(caplog, stopper):
    caplog.set_level(logging.WARNING, logger="winclip")
    status = LiveStatus()
    sink = MqttSink("127.0.0.1", free_port(), topic=TOPIC, status=status)  # nothing listens there
    stopper(sink)
    assert write_cost(sink, [event(i) for i in range(500)]) < 10
    assert (sink.published, sink.failed, sink.dropped) == (0, 0, 0)  # nothing tried on the caller's thread
    assert wait_until(lambda: sink.connect_failures >= 2, timeout=8)  # paho retries after about 3 s
    started = time.perf_counter()
    sink.close(timeout=1.0)
    assert time.perf_counter() - started < 1.3
    assert (sink.published, sink.failed) == (0, 500) and status.snapshot()["sink_errors"] == {"mqtt": 500}
    warnings = sink_warnings(caplog)
    assert len(warnings) == 1 and "unreachable" in warnings[0], warnings


def test_mqtt_reconnects_when_the_broker_comes_up_and_keeps_the_newest(stopper):
    port = free_port()
    status = LiveStatus()
    sink = MqttSink("127.0.0.1", port, topic=TOPIC, status=status, queue_size=10)
    stopper(sink)
    for i in range(25):  # broker down: the queue keeps the newest 10
        sink.write(event(i))
    assert sink.dropped == 15 and status.snapshot()["sink_errors"] == {"mqtt": 15}
    # Start the broker after the first attempt failed; the next comes about 3 s later (paho's
    # backoff), time enough to subscribe first and see exactly which events the queue kept.
    assert wait_until(lambda: sink.connect_failures >= 1)
    running = ThreadedBroker(port).start()
    stopper(running)
    stopper(subscriber := Subscriber(port))
    assert wait_until(lambda: sink.published == 10, timeout=10), "the sink did not reconnect"
    later = [event(i) for i in range(100, 110)]  # no more than the queue holds
    for e in later:
        sink.write(e)
    assert wait_until(lambda: len(subscriber.received) >= 20), f"{len(subscriber.received)} of 20 arrived"
    assert subscriber.received == [event(i) for i in range(15, 25)] + later
    sink.close()
    assert (sink.published, sink.dropped, sink.failed) == (20, 15, 0)


class HungPeer:
    """A hung broker: accepts TCP connections and never answers, or (ack_connect) answers the
    MQTT CONNECT with a CONNACK "accepted" and then swallows every PUBLISH without a PUBACK."""

    CONNACK_ACCEPTED = bytes([0x20, 0x02, 0x00, 0x00])

    def __init__(self, ack_connect: bool):
        self.ack_connect = ack_connect
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            while True:
                conn = self.server.accept()[0]
                self.accepted.append(conn)
                if self.ack_connect:
                    threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
        except OSError:
            pass  # closed

    def _swallow(self, conn):
        try:
            conn.recv(4096)  # the CONNECT
            conn.sendall(self.CONNACK_ACCEPTED)
            while conn.recv(65536):
                pass
        except OSError:
            pass  # closed

    def close(self):
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.parametrize("peer", ["refuses", "silent", "never_acks"])
def test_mqtt_refusing_or_hung_broker_never_stalls_the_caller(peer, caplog, stopper):
    caplog.set_level(logging.WARNING, logger="winclip")
    if peer == "refuses":  # a real broker that refuses anonymous clients (CONNACK "not authorized")
        port = free_port()
        stopper(ThreadedBroker(port, allow_anonymous=False).start())
    else:
        stopper(hung := HungPeer(ack_connect=peer == "never_acks"))
        port = hung.port
    status = LiveStatus()
    sink = MqttSink("127.0.0.1", port, topic=TOPIC, status=status)
    assert write_cost(sink, [event(i) for i in range(500)]) < 10
    assert (sink.published, sink.failed) == (0, 0)  # nothing tried, nothing given up on the caller's thread
    time.sleep(0.5)
    started = time.perf_counter()
    sink.close(timeout=1.0)
    assert time.perf_counter() - started < 1.3
    assert (sink.published, sink.failed) == (0, 500) and status.snapshot()["sink_errors"] == {"mqtt": 500}
    if peer == "refuses":
        warnings = sink_warnings(caplog)
        assert len(warnings) == 1 and "refused" in warnings[0], warnings


# --- webhook
def test_webhook_posts_anomalous_events_only(receiver):
    server = receiver()
    status = LiveStatus()
    sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/hook", status=status)
    stream = [event(0), event(1, anomalous=True), {"source": "cam0", "frame": 2, "time": 1.0, "error": "decode failed"},
              {"source": "cam0", "time": 2.0, "event": "source_lost", "detail": "EOF"}, event(3, anomalous=True)]
    for e in stream:
        sink.write(e)
    sink.close()
    assert server.received == [("application/json", stream[1]), ("application/json", stream[4])]
    assert (sink.published, sink.failed) == (2, 0) and status.snapshot()["sink_errors"] == {}


def test_webhook_slow_receiver_is_a_counted_failure_not_a_stall(receiver, caplog):
    caplog.set_level(logging.WARNING, logger="winclip")
    server = receiver("slow")
    status = LiveStatus()
    sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/", timeout=0.3, status=status)
    started = time.perf_counter()
    sink.write(event(1, anomalous=True))
    sink.write(event(2, anomalous=True))
    # The receiver holds each POST for 5 s, the sink gives up after 0.3 s: a write that waited for its POST
    # would return after a timeout at the least.
    assert time.perf_counter() - started < sink.timeout and (sink.published, sink.failed) == (0, 0)
    # a timed-out alert is kept and retried (with backoff), never dropped on the first failure
    assert wait_until(lambda: len(server.received) >= 2, timeout=5), "the timed-out alert was not retried"
    assert sink.stats()["queued"] == 2 and sink.failed == 0
    for i in range(3, 6):  # these wait behind a hung POST when close() comes: unsent, counted
        sink.write(event(i, anomalous=True))
    started = time.perf_counter()
    sink.close(timeout=0.4)
    assert time.perf_counter() - started < 0.7
    assert (sink.published, sink.failed) == (0, 5) and status.snapshot()["sink_errors"] == {"webhook": 5}
    warnings = sink_warnings(caplog)
    assert len(warnings) == 1 and "timed out" in warnings[0], warnings


def test_webhook_error_response_is_counted(receiver, monkeypatch):
    from winclip.runtime.line import defaults

    monkeypatch.setattr(defaults, "WEBHOOK_RETRY_S", (0.05, 0.2))
    server = receiver("error")
    status = LiveStatus()
    sink = WebhookSink(f"http://127.0.0.1:{server.server_port}/", status=status, only_anomalous=False)
    sink.write(event(1))
    sink.write(event(2, anomalous=True))
    sink.close(timeout=1.5)  # a 500 is retried until the end of the flush time, in order, then counted
    assert len(server.received) >= 3 and {e["frame"] for _, e in server.received} == {1}
    assert (sink.published, sink.failed) == (0, 2) and status.snapshot()["sink_errors"] == {"webhook": 2}


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "localhost:8080/hook", "http:///nohost"])
def test_webhook_accepts_http_urls_only(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSink(url)


# --- live page
def fetch(url: str, method: str = "GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture
def live(stopper):
    status = LiveStatus(["cam/0", "line:2"])
    for i in range(10):
        status.record_event(event(i, anomalous=i in (3, 7), source="cam/0") | {"latency_ms": {"total": 10.0 * (i + 1)}})
    status.record_event({"source": "cam/0", "frame": 10, "time": 2.0, "error": "decode failed"})
    status.record_drop("cam/0", 4)
    status.set_health("cam/0", "ok")
    status.set_health("line:2", "reconnecting", "RTSP timeout")
    status.record_sink_error("mqtt")
    status.record_sink_error("mqtt")
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), (0, 0, 200), np.uint8))[1].tobytes()
    status.set_overlay("cam/0", jpeg)
    server = LiveServer(status, port=0)
    server.start()
    stopper(server)
    return server, status, jpeg


def test_live_server_serves_page_status_metrics_and_overlays(live, capfd):
    server, status, jpeg = live
    base = server.url
    code, headers, page = fetch(base)
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"status.json" in page and b"encodeURIComponent" in page
    # self-contained: nothing is loaded from elsewhere (an SVG namespace URI is a name, not a load)
    assert not re.search(rb"""(src|href)\s*=\s*["']?https?://|url\(\s*["']?https?://|@import""", page)

    code, headers, body = fetch(base + "status.json")
    snap = json.loads(body)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert (snap["scored"], snap["anomalous"], snap["errors"], snap["dropped"]) == (10, 2, 1, 4)
    assert snap["sources"]["line:2"]["health"] == "reconnecting" and snap["sources"]["cam/0"]["has_overlay"]

    code, headers, body = fetch(base + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    cam, line = (("source", "cam/0"),), (("source", "line:2"),)
    expected_latency = status.snapshot()["latency_ms"]
    assert samples[("winclip_frames_scored_total", cam)] == 10
    assert samples[("winclip_frames_anomalous_total", cam)] == 2
    assert samples[("winclip_frames_dropped_total", cam)] == 4
    assert samples[("winclip_frame_errors_total", cam)] == 1
    assert samples[("winclip_frames_scored_total", line)] == 0
    assert samples[("winclip_latency_p50_seconds", ())] == pytest.approx(expected_latency["p50"] / 1000)
    assert samples[("winclip_latency_p95_seconds", ())] == pytest.approx(expected_latency["p95"] / 1000)
    assert expected_latency["p50"] == pytest.approx(55.0)
    assert ("winclip_fps", ()) in samples and samples[("winclip_fps", ())] >= 0
    assert samples[("winclip_source_up", cam)] == 1 and samples[("winclip_source_up", line)] == 0
    assert samples[("winclip_sink_errors_total", (("sink", "mqtt"),))] == 2

    code, headers, body = fetch(base + "overlay/" + urllib.parse.quote("cam/0", safe="") + ".jpg?t=1")
    assert code == 200 and headers["Content-Type"] == "image/jpeg" and body == jpeg
    assert fetch(base + "overlay/" + urllib.parse.quote("line:2", safe="") + ".jpg")[0] == 404  # none yet
    assert fetch(base + "overlay/..%2F..%2Fetc%2Fpasswd.jpg")[0] == 404  # names, never files
    assert fetch(base + "nothing/here")[0] == 404

    code, headers, body = fetch(base, method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) == len(page)
    assert capfd.readouterr().err == ""  # no line per request


def test_live_server_status_json_stays_strict_with_a_nan_score(live):
    server, status, _ = live
    status.record_event(event(11, source="cam/0") | {"image_score": math.nan})
    body = fetch(server.url + "status.json")[2]
    snap = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} in /status.json"))
    assert snap["sources"]["cam/0"]["last_score"] is None


def test_live_server_port_in_use_says_so(live):
    server, status, _ = live
    second = LiveServer(status, port=server.port)
    with pytest.raises(OSError, match=f"port {server.port} on 127.0.0.1 is already in use"):
        second.start()
    second.close()  # never started: a no-op
