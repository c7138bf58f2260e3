"""The live page of `winclip-inspect --serve PORT`: an operator page, /status.json, Prometheus /metrics, and the
operator's history and writes.

Everything is read from the run's `LiveStatus` (and its `OperatorDesk`, when
attached) at request time; nothing is served from disk but the run's own saved
overlays. Stdlib `ThreadingHTTPServer` on a daemon thread, bound to 127.0.0.1
unless the operator chooses otherwise, quiet (no per-request log lines).

Reads: `/`, `/status.json`, `/metrics`, `/overlay/<source>.jpg`, `/api/trend`,
`/api/gallery?before=ID`, `/gallery/<id>.jpg`, `/api/profile`. Writes (POST,
`Authorization: Bearer TOKEN`, refused unless the run has an operator token):
`/api/teach` (JSON `{"item": ID}` for a gallery frame, or an image body),
`/api/undo`. A write's body is bounded (MAX_POST_BYTES) and an image is decoded
under the pixel cap of every frame. The review desk's page, reads and writes
(`/review`, `/api/review`, `/api/review/ack`, `/api/review/label`, `/api/version`)
are review_routes.py's; its writes pass the same WriteGuard first. A station
(station.py) adds `/api/station/reload`: its file is re-read, behind the token.
"""

from __future__ import annotations

import errno
import json
import math
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from winclip.runtime.errors import MissingExtra, WinclipError
from winclip.runtime.line import defaults
from winclip.runtime.line import review_routes
from winclip.runtime.line.page import PAGE
from winclip.runtime.line.status import LiveStatus

OVERLAY_PREFIX, OVERLAY_SUFFIX = "/overlay/", ".jpg"
GALLERY_PREFIX = "/gallery/"
MAX_JSON_BODY = 64 << 10  # a write's JSON body (who, why, an item id)
# The page's own script and styles only; no other site may frame it (a click on "this part is good" is a write).
SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
                   "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


RELOAD = "/api/station/reload"  # POST, with the operator token: a station re-reads its file


class LiveServer:
    """Serve `/`, `/status.json`, `/metrics` and `/overlay/<source>.jpg` for one run."""

    def __init__(self, status: LiveStatus, host: str = defaults.SERVE_HOST, port: int = 8080):
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:
            raise MissingExtra(f"--serve needs prometheus-client for /metrics: {defaults.LIVE_EXTRA}") from None
        self.status, self.host, self.port = status, host, port
        self.desk = None  # the run's OperatorDesk, attached when there is one: history, teaching, drift
        self.reload = None  # a station's reload (who -> what it does), attached when the run is a station
        self.guard = None  # the WriteGuard of writes that are not the desk's (a station's reload)
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

    def do_POST(self) -> None:
        self._write_request()

    def log_message(self, format, *args) -> None:
        pass  # no line per request: the terminal belongs to the status line

    def _respond(self, send_body: bool) -> None:
        live = self.server.live
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path  # still %-quoted: a source's '/' stays %2F
        query = urllib.parse.parse_qs(parts.query)
        desk = live.desk
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE.encode(), send_body)
        elif path == "/status.json":
            self._json(200, _page_status(live.status), send_body)
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            self._send(200, CONTENT_TYPE_LATEST, live.metrics_text(), send_body)
        elif path.startswith(OVERLAY_PREFIX) and path.endswith(OVERLAY_SUFFIX):
            source = urllib.parse.unquote(path[len(OVERLAY_PREFIX):-len(OVERLAY_SUFFIX)])
            jpeg = live.status.overlay(source, _int(query.get("seq", [None])[0]))
            if jpeg is None:
                message = f"no overlay yet for source {source!r}\n".encode()
                self._send(404, "text/plain; charset=utf-8", message, send_body)
            else:
                self._send(200, "image/jpeg", jpeg, send_body)
        elif path == "/api/trend" and desk is not None and desk.trend is not None:
            self._json(200, desk.trend.series(), send_body)
        elif path == "/api/gallery" and desk is not None and desk.gallery is not None:
            before = _int(query.get("before", [None])[0])
            limit = min(max(_int(query.get("limit", [None])[0]) or defaults.GALLERY_PAGE, 1), 100)
            source = query.get("source", [None])[0]
            self._json(200, desk.gallery.page(before, limit, source), send_body)
        elif path.startswith(GALLERY_PREFIX) and path.endswith(".jpg") and desk is not None and desk.gallery is not None:
            item = _int(path[len(GALLERY_PREFIX):-4])
            jpeg = None if item is None else desk.gallery.picture(item)
            if jpeg is None:
                self._send(404, "text/plain; charset=utf-8", b"this picture is no longer kept\n", send_body)
            else:
                self._send(200, "image/jpeg", jpeg, send_body, cache=True)
        elif path == "/api/profile" and desk is not None:
            self._json(200, desk.versions(), send_body)
        elif review_routes.get(self, path, query, send_body):
            pass  # the review desk's page, episodes and pictures (review_routes.py)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", send_body)

    def _write_request(self) -> None:
        """A POST: the token first (before any body is read), then a bounded body, then the desk."""
        desk = self.server.live.desk
        path = urllib.parse.urlsplit(self.path).path
        if path == RELOAD:
            self._reload_request()
            return
        if desk is None or path not in ("/api/teach", "/api/teach/preview", "/api/undo", *review_routes.WRITES):
            self.close_connection = True
            self._json(404, {"error": "not found"}, True)
            return
        access = self._authorize(desk.guard)
        if access is None:
            return
        if path in review_routes.WRITES:
            review_routes.post(self, path, access)
            return
        try:
            body, kind, fields = self._request()
            who, why = self._who(access, fields), str(fields.get("why") or "")
            if path == "/api/undo":
                job = desk.request_undo(who=who, why=why or "undo on the live page")
            else:
                answer = _teach(desk, path, body if kind == "image" else None, fields, who, why)
                if path == "/api/teach/preview":
                    self._json(200, {"preview": answer}, True)
                    return
                job = answer
        except WinclipError as exc:  # a refusal, or any failure on purpose: one line, never a dropped connection
            self.close_connection = True
            self._json(getattr(exc, "status", 500), {"error": str(exc)}, True)
            return
        self._json(202, {"job": job.to_json()}, True)

    def _authorize(self, guard):
        """The request's access, or None after answering a refusal (the body, if any, is never read)."""
        access = guard.authorize(self.headers.get("Authorization"))
        refused = access.refused
        if refused is None:
            return access
        self.close_connection = True
        message = {"read-only": "this page is read-only: start winclip-inspect --serve with an operator token "
                                "(--operator-token-file or " + defaults.OPERATOR_TOKEN_ENV + ")",
                   "missing": "this needs the operator token (Authorization: Bearer TOKEN)",
                   "wrong": "wrong operator token"}[refused]
        self._json(403 if refused == "read-only" else 401, {"error": message, "refused": refused}, True,
                   headers={"WWW-Authenticate": "Bearer"} if refused != "read-only" else None)
        return None

    def _reload_request(self) -> None:
        """A station's reload, asked for by an operator: the file is re-read off this thread."""
        live = self.server.live
        if live.reload is None or live.guard is None:
            self.close_connection = True
            self._json(404, {"error": "not found: only a station (winclip-inspect --station) reloads"}, True)
            return
        access = self._authorize(live.guard)
        if access is None:
            return
        self.close_connection = True  # no body is read
        self._json(202, {"reload": live.reload(self._who(access, {}))}, True)

    def _request(self) -> tuple[bytes, str, dict]:
        """A write's body, its kind, and its fields (a JSON body's object; none for an image)."""
        from winclip.runtime.line.operator import OperatorError

        body, kind = self._body()
        if kind != "json":
            return body, kind, {}
        try:
            fields = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, ValueError):
            raise OperatorError("the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise OperatorError("the body must be a JSON object")
        return body, kind, fields

    def _who(self, access, fields: dict) -> str:
        """Whose change it is: a named token decides; an unnamed one takes the typed name, else the address."""
        return str(access.name or fields.get("who") or f"operator at {self.client_address[0]}")

    def _body(self) -> tuple[bytes, str]:
        """The request body within its bound: ("json" | "image", bytes)."""
        from winclip.runtime.line.operator import OperatorError

        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        kind = "image" if content_type.startswith("image/") or content_type == "application/octet-stream" else "json"
        limit = defaults.MAX_POST_BYTES if kind == "image" else MAX_JSON_BODY
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                raise OperatorError("send the body with a Content-Length", 411)
            return b"", kind
        if not length.strip().isdigit():
            raise OperatorError("bad Content-Length")
        size = int(length)
        if size > limit:
            raise OperatorError(f"the body is {size} bytes; at most {limit} are accepted here", 413)
        body = self.rfile.read(size)
        if len(body) != size:
            raise OperatorError("the body ended early")
        return body, kind

    def _json(self, code: int, data, send_body: bool, headers: dict | None = None) -> None:
        body = json.dumps(_finite(data), allow_nan=False).encode()
        self._send(code, "application/json", body, send_body, headers=headers)

    def _send(self, code: int, content_type: str, body: bytes, send_body: bool, cache: bool = False,
              headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # always the newest state and overlay; a gallery picture never changes
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", SECURITY_POLICY)
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _teach(desk, path: str, image: bytes | None, fields: dict, who: str, why: str):
    """A teach in two steps: /api/teach/preview (a gallery item or an image) answers what it would do;
    /api/teach confirms one preview by its id and queues exactly that change."""
    from winclip.runtime.line.operator import OperatorError

    if path == "/api/teach/preview":
        if image is not None:
            return desk.preview_teach(image=image, who=who, why=why or "posted as a good part")
        item = fields.get("item")
        if not isinstance(item, int) or isinstance(item, bool):
            raise OperatorError("say which gallery frame: {\"item\": ID}, or post an image")
        return desk.preview_teach(item=item, who=who, why=why or "marked good on the live page")
    preview = fields.get("preview")
    if image is not None or not isinstance(preview, str):
        raise OperatorError("a teach is confirmed by its preview: POST the frame ({\"item\": ID}) or the image to "
                            "/api/teach/preview first, then {\"preview\": ID} here", 428)
    return desk.request_teach(preview=preview, who=who, why=why or "marked good on the live page")


def _page_status(status: LiveStatus) -> dict:
    """/status.json: the snapshot and the page's clock settings (the page judges staleness by the run's clock)."""
    return {**status.snapshot(), "page": {"poll_s": defaults.PAGE_POLL_S, "stale_frame_s": defaults.PAGE_STALE_FRAME_S}}


def _int(text) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() and len(text) < 12 else None


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
        yield from _source_clock_metrics(snap)
        up = GaugeMetricFamily("winclip_source_up", "1 while the source delivers frames, else 0", labels=["source"])
        for source, state in sources.items():
            up.add_metric([source], 1.0 if state["health"] == "ok" else 0.0)
        yield up
        sink_errors = CounterMetricFamily("winclip_sink_errors", "Events a plant sink dropped or failed to deliver",
                                          labels=["sink"])
        for sink, count in snap["sink_errors"].items():
            sink_errors.add_metric([sink], count)
        yield sink_errors
        operator = snap.get("operator")
        if operator is not None:
            yield from _operator_metrics(operator)
        if snap.get("review") is not None:
            yield from review_routes.metrics(snap["review"])


def _source_clock_metrics(snap: dict):
    """Per source: how often it was lost, and when its newest frame was captured (and how long ago), so that a
    plant's Prometheus can alert on a silent camera."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    losses = CounterMetricFamily("winclip_source_losses", "Times a source stopped delivering", labels=["source"])
    stamp = GaugeMetricFamily("winclip_last_frame_timestamp_seconds", "Capture time (Unix) of the newest frame "
                              "scored", labels=["source"])
    age = GaugeMetricFamily("winclip_last_frame_age_seconds", "Seconds since the newest scored frame was captured",
                            labels=["source"])
    for source, state in snap["sources"].items():
        losses.add_metric([source], state["losses"])
        if state["last_time"] is not None:
            stamp.add_metric([source], state["last_time"])
            age.add_metric([source], max(0.0, snap["now"] - state["last_time"]))
    yield from (losses, stamp, age)


def _threshold_metrics(operator: dict):
    """The image and pixel thresholds in force (absent: none set)."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily("winclip_threshold", "Threshold in force", labels=["kind"])
    for kind, key in (("image", "threshold"), ("pixel", "pixel_threshold")):
        if operator.get(key) is not None:
            family.add_metric([kind], operator[key])
    yield family


def _operator_metrics(operator: dict):
    """Drift, the profile version in use, and the operator's writes, from the desk's snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    distance = GaugeMetricFamily("winclip_drift_distance", "KS distance between recent normal scores and the "
                                 "profile's reference scores", labels=["source"])
    drifting = GaugeMetricFamily("winclip_drift", "1 while a drift episode is open, else 0", labels=["source"])
    episodes = CounterMetricFamily("winclip_drift_episodes", "Drift episodes started", labels=["source"])
    for source, state in operator["drift"].items():
        if state["distance"] is not None:
            distance.add_metric([source], state["distance"])
        drifting.add_metric([source], 1.0 if state["drifting"] else 0.0)
        episodes.add_metric([source], state["episodes"])
    yield from (distance, drifting, episodes)
    yield from _threshold_metrics(operator)
    version = GaugeMetricFamily("winclip_profile_version", "The line profile version in use")
    if operator["version"] is not None:
        version.add_metric([], operator["version"])
    yield version
    yield CounterMetricFamily("winclip_profile_changes", "Profile versions switched to during the run",
                              value=operator["changes"])
    refused = CounterMetricFamily("winclip_operator_refused", "Write requests refused", labels=["reason"])
    for reason, count in operator["access"]["refused"].items():
        refused.add_metric([reason], count)
    yield refused
