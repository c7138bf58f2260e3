"""The webhook sink: anomalous events POSTed as JSON to an http(s) URL, off the scoring thread."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import click

from winclip.runtime.defaults import next_wait
from winclip.runtime.line import defaults
from winclip.runtime.line.redact import redact_url
from winclip.runtime.line.sinks.base import QueuedSink, SinkKind
from winclip.runtime.line.status import LiveStatus

log = logging.getLogger(__name__)

RETRY_CODES = (408, 425, 429)  # client errors that say "later", not "never": retried like a 5xx


def check_webhook_url(url: str) -> str:
    """The URL if it is http(s) with a host; ValueError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http:// or https:// with a host, got {redact_url(url)!r}")
    return url


class WebhookSink(QueuedSink):
    """POST events (by default the anomalous ones only) as JSON to an http(s) URL from a background thread."""

    kind = "webhook"

    def __init__(self, url: str, timeout: float = defaults.WEBHOOK_TIMEOUT_S, only_anomalous: bool = True,
                 status: LiveStatus | None = None,
                 queue_size: int = defaults.SINK_QUEUE):
        check_webhook_url(url)
        super().__init__(status, queue_size)
        self.url, self.timeout, self.only_anomalous = url, timeout, only_anomalous
        # No redirects: urllib would turn a redirected POST into a body-less GET; a 3xx counts as a failure.
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._posting = 0  # 1 while a POST is on the wire
        self._settled_at_close = False
        self._worker = threading.Thread(target=self._post_loop, name="webhook-sink", daemon=True)
        self._worker.start()

    def _in_flight(self) -> int:
        return self._posting

    def write(self, event: dict) -> None:
        """Queue the event if it is anomalous (or if only_anomalous is off); never blocks or raises."""
        if self.only_anomalous and event.get("anomalous") is not True:
            return
        self._enqueue(event)

    def close(self, timeout: float = defaults.SINK_CLOSE_TIMEOUT_S) -> None:
        """POST what is queued within `timeout`, stop the thread; count the rest failed."""
        deadline = self._begin_close(timeout)
        self._worker.join(max(0.0, deadline - time.monotonic()))
        with self._cond:  # a POST still hanging is lost too; its late answer, if any, is ignored
            hanging, self._settled_at_close = self._posting, True
        self._count_failed(self._unsent_at_close() + hanging)

    def _post_loop(self) -> None:
        delay = defaults.WEBHOOK_RETRY_S[0]
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing and (not self._queue or time.monotonic() >= self._drain_until):
                    return
                payload = self._queue.popleft()
                self._posting = 1
                timeout = self.timeout if not self._closing else max(0.05, min(self.timeout,
                                                                             self._drain_until - time.monotonic()))
            try:
                problem, retry = self._post(payload, timeout)
            finally:
                with self._cond:
                    self._posting = 0
                    late = self._settled_at_close
            if late:  # close() has counted this one already
                return
            if problem is None:
                delay = defaults.WEBHOOK_RETRY_S[0]
                with self._cond:
                    self.published += 1
                self._recovered(f"webhook {redact_url(self.url)} answering again")
                continue
            self._outage(f"webhook {redact_url(self.url)} failed ({problem}); alerts are kept (up to "
                         f"{self._queue_size}) and retried with backoff")
            if not retry:  # the receiver refused this alert itself (a 4xx): sending it again cannot help
                self._count_failed(1)
                continue
            with self._cond:  # back to the head of the queue, in order; when full, the oldest goes, as always
                self._queue.appendleft(payload)
                if len(self._queue) > self._queue_size:
                    self._queue.popleft()
                    self.dropped += 1
                    self._record_errors(1)
                wait = min(delay, max(0.0, self._drain_until - time.monotonic())) if self._closing else delay
                self._cond.wait(wait)
            delay = next_wait(delay, defaults.WEBHOOK_RETRY_S)

    def _post(self, payload: bytes, timeout: float) -> tuple[str | None, bool]:
        """POST one event: (None, False) when the receiver answered 2xx, else (what went wrong, worth a retry)."""
        request = urllib.request.Request(self.url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read(65536)  # drain a little so the connection closes cleanly
                code = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            code = exc.code
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets; ValueError: a malformed response
            reason = getattr(exc, "reason", exc)
            return (f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__), True
        if 200 <= code < 300:
            return None, False
        return f"HTTP {code}", code >= 500 or code in RETRY_CODES


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx code


class Webhook(SinkKind):
    name = "webhook"
    primary = "webhook"  # the option that asks for this sink
    options = (
        click.option("--webhook", default=None, metavar="URL",
                     help="Live: POST each anomalous event as JSON to this http(s) URL (short timeout, off the "
                          "scoring thread)."),
    )

    def plan(self, values: dict, out):
        if values["webhook"] is None:
            return None
        try:
            return check_webhook_url(values["webhook"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--webhook'") from None

    def open(self, plan, status: LiveStatus):
        return [(WebhookSink(plan, status=status), f"webhook {redact_url(plan)}")]


KIND = Webhook()
