"""The live page of `winclip-inspect --serve PORT`: an operator page, /status.json and Prometheus /metrics.

Everything is read from the run's `LiveStatus` at request time; nothing is served
from disk. Stdlib `ThreadingHTTPServer` on a daemon thread, bound to 127.0.0.1
unless the operator chooses otherwise, quiet (no per-request log lines).
"""

from __future__ import annotations

import errno
import json
import math
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from winclip.runtime.errors import MissingExtra
from winclip.runtime.line import defaults
from winclip.runtime.line.sinks.base import LIVE_EXTRA
from winclip.runtime.line.status import LiveStatus

OVERLAY_PREFIX, OVERLAY_SUFFIX = "/overlay/", ".jpg"


class LiveServer:
    """Serve `/`, `/status.json`, `/metrics` and `/overlay/<source>.jpg` for one run."""

    def __init__(self, status: LiveStatus, host: str = defaults.SERVE_HOST, port: int = 8080):
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:
            raise MissingExtra(f"--serve needs prometheus-client for /metrics: {LIVE_EXTRA}") from None
        self.status, self.host, self.port = status, host, port
        self.registry = CollectorRegistry()  # private: never mixes with a process-wide default registry
        self.registry.register(_StatusCollector(status))
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve on a daemon thread; a taken port raises OSError saying so."""
        server_class = _Server6 if ":" in self.host else _Server
        try:
            httpd = server_class((self.host, self.port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"port {self.port} on {self.host} is already in use "
                                         f"(another --serve running?); choose another port") from exc
            raise OSError(exc.errno, f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        httpd.live = self
        self._httpd = httpd
        self.port = httpd.server_address[1]  # the real one when port 0 asked for any free port
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"live-server-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self, timeout: float = 0.0) -> None:
        """Stop serving (the page needs no flushing: `timeout` is there to close like a sink)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()  # returns once serve_forever has stopped
        self._httpd.server_close()
        self._thread.join()
        self._httpd = self._thread = None

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung browser connection must not keep the process alive
    live: LiveServer

    def handle_error(self, request, client_address) -> None:
        pass  # a browser closing mid-response is routine; the page must not spam the terminal


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "winclip-live"

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def log_message(self, format, *args) -> None:
        pass  # no line per request: the terminal belongs to the status line

    def _respond(self, send_body: bool) -> None:
        live = self.server.live
        path = urllib.parse.urlsplit(self.path).path  # still %-quoted: a source's '/' stays %2F
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode(), send_body)
        elif path == "/status.json":
            body = json.dumps(_finite(live.status.snapshot()), allow_nan=False).encode()
            self._send(200, "application/json", body, send_body)
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            self._send(200, CONTENT_TYPE_LATEST, live.metrics_text(), send_body)
        elif path.startswith(OVERLAY_PREFIX) and path.endswith(OVERLAY_SUFFIX):
            source = urllib.parse.unquote(path[len(OVERLAY_PREFIX):-len(OVERLAY_SUFFIX)])
            jpeg = live.status.overlay(source)
            if jpeg is None:
                message = f"no overlay yet for source {source!r}\n".encode()
                self._send(404, "text/plain; charset=utf-8", message, send_body)
            else:
                self._send(200, "image/jpeg", jpeg, send_body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", send_body)

    def _send(self, code: int, content_type: str, body: bytes, send_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # always the newest state and overlay
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _finite(value):
    """The snapshot with NaN/inf (an engine gone wrong) as null, so browsers' JSON.parse accepts it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class _StatusCollector:
    """Prometheus metrics computed from status.snapshot() at scrape time (no state of its own)."""

    def __init__(self, status: LiveStatus):
        self.status = status

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.status.snapshot()
        sources = snap["sources"]
        per_source = [
            ("winclip_frames_scored", "Frames scored", "scored"),
            ("winclip_frames_anomalous", "Frames judged anomalous", "anomalous"),
            ("winclip_frames_dropped", "Frames dropped before scoring (the loop fell behind)", "dropped"),
            ("winclip_frame_errors", "Frames that failed to score", "errors"),
        ]
        for name, help_text, key in per_source:
            family = CounterMetricFamily(name, help_text, labels=["source"])
            for source, state in sources.items():
                family.add_metric([source], state[key])
            yield family
        latency = snap["latency_ms"]
        for pct in ("p50", "p95"):
            family = GaugeMetricFamily(f"winclip_latency_{pct}_seconds",
                                       f"Rolling {pct} of end-to-end frame latency, last {latency['window']} frames")
            if latency[pct] is not None:
                family.add_metric([], latency[pct] / 1000.0)
            yield family
        yield GaugeMetricFamily("winclip_fps", "Rolling frames scored per second", value=snap["fps"])
        up = GaugeMetricFamily("winclip_source_up", "1 while the source delivers frames, else 0", labels=["source"])
        for source, state in sources.items():
            up.add_metric([source], 1.0 if state["health"] == "ok" else 0.0)
        yield up
        sink_errors = CounterMetricFamily("winclip_sink_errors", "Events a plant sink dropped or failed to deliver",
                                          labels=["sink"])
        for sink, count in snap["sink_errors"].items():
            sink_errors.add_metric([sink], count)
        yield sink_errors


# The operator page: self-contained (no external assets), rebuilt from /status.json every second.
# Source names go into the DOM as text and into URLs through encodeURIComponent, never as HTML.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>winclip live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{padding:10px 16px;background:#1c1c1c;display:flex;flex-wrap:wrap;gap:18px;align-items:baseline}
header h1{font-size:16px;margin:0;color:#fff}.k{color:#888}.v{color:#fff;font-weight:600}
#sources{display:flex;flex-wrap:wrap;gap:14px;padding:14px}
.card{background:#1c1c1c;border:3px solid #333;border-radius:6px;padding:8px;width:420px}
.card.anomalous{border-color:#d33}.card h2{font-size:15px;margin:0 0 6px;word-break:break-all}
.card img,.none{width:100%;background:#000;min-height:120px;display:block}.none{color:#666;text-align:center;line-height:120px}
.badge{padding:1px 6px;border-radius:3px;font-size:12px;margin-left:6px;color:#000}
.ok{background:#4c4}.starting{background:#aaa}.reconnecting{background:#fb3}.lost{background:#f55}.ended{background:#888}
.stats{margin-top:6px;color:#aaa}#stale{color:#f55;display:none}
</style></head><body>
<header><h1>winclip live</h1><span id="totals"></span><span id="stale">page not updating: run stopped?</span></header>
<div id="sources"></div>
<script>
const fmt = (v, d) => v === null || v === undefined ? "-" : Number(v).toFixed(d);
function item(key, value) { return `<span class="k">${key}</span> <span class="v">${value}</span>`; }
function card(name) {
  const id = "src-" + encodeURIComponent(name);
  let el = document.getElementById(id);
  if (el) return el;
  el = document.createElement("div"); el.className = "card"; el.id = id;
  el.innerHTML = '<h2><span class="name"></span><span class="badge"></span></h2><div class="none overlay">no overlay yet</div><div class="stats"></div>';
  el.querySelector(".name").textContent = name;
  document.getElementById("sources").appendChild(el);
  return el;
}
async function refresh() {
  let s;
  try { s = await (await fetch("status.json", {cache: "no-store"})).json(); }
  catch (e) { document.getElementById("stale").style.display = "inline"; return; }
  document.getElementById("stale").style.display = "none";
  const sinkErrors = Object.values(s.sink_errors).reduce((a, b) => a + b, 0);
  document.getElementById("totals").innerHTML = [
    item("scored", s.scored), item("anomalous", s.anomalous), item("errors", s.errors), item("dropped", s.dropped),
    item("p50/p95", fmt(s.latency_ms.p50, 0) + "/" + fmt(s.latency_ms.p95, 0) + " ms"), item("fps", fmt(s.fps, 2)),
    item("sink errors", sinkErrors), item("uptime", fmt(s.uptime_s, 0) + " s")].join(" &nbsp; ");
  for (const [name, src] of Object.entries(s.sources)) {
    const el = card(name), badge = el.querySelector(".badge");
    badge.textContent = src.health; badge.className = "badge " + src.health; badge.title = src.detail;
    el.classList.toggle("anomalous", src.last_anomalous === true);
    el.querySelector(".stats").textContent = [`score ${fmt(src.last_score, 3)}`, `scored ${src.scored}`,
      `anomalous ${src.anomalous}`, `errors ${src.errors}`, `dropped ${src.dropped}`, src.detail].filter(Boolean).join(" · ");
    if (src.has_overlay && !el.loading) {  // load off-screen, swap when complete: no flicker, no pile-up
      const next = new Image();
      el.loading = true;
      next.className = "overlay";
      next.onload = () => { el.querySelector(".overlay").replaceWith(next); el.loading = false; };
      next.onerror = () => { el.loading = false; };
      next.alt = "latest overlay";
      next.src = "overlay/" + encodeURIComponent(name) + ".jpg?t=" + Date.now();
    }
  }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
