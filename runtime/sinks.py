"""Plant sinks for the live inspection loop: events to an MQTT broker and to a webhook.

The scoring loop must never wait on the plant network, so `write()` only
serialises the event and appends it to a bounded in-memory queue (dropping the
oldest event when full); a daemon thread per sink does the network I/O. A broker
or receiver that is down, slow or refusing costs counted failures and one warning
per outage, never a stalled or crashed loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque

from winclip.runtime.live_status import LiveStatus

log = logging.getLogger(__name__)

LIVE_EXTRA = "pip install 'winclip-edge[live]'"


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split "host", "host:1884" or "[::1]:1884" into (host, port); ValueError names what is wrong."""
    given = text.strip()
    if not given:
        raise ValueError("empty address: give HOST or HOST:PORT, e.g. broker.local:1883")
    if "://" in given:
        raise ValueError(f"{text!r}: give HOST or HOST:PORT without a scheme, e.g. broker.local:1883")
    if given.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, sep, rest = given[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} inside [] is not an IPv6 address") from None
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        return host, _port(rest[1:], text)
    if given.count(":") > 1:  # a bare IPv6 address: "fe80::1:1884" would be ambiguous
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1] or [::1]:{default_port}")
    host, sep, port = given.partition(":")
    if not host or any(c.isspace() or c in "/@?#[]" for c in host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    return host, (_port(port, text) if sep else default_port)


def _port(digits: str, text: str) -> int:
    if not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535, got {digits!r}")
    return int(digits)


class _QueuedSink:
    """A bounded drop-oldest queue, the counters and the once-per-outage warning that both sinks share."""

    kind = "sink"  # the label in status.record_sink_error(...)

    def __init__(self, status: LiveStatus | None, queue_size: int):
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._status = status
        self._queue_size = queue_size
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()  # guards the queue, the counters and the flags below
        self._closing = False
        self._drain_until = float("inf")  # monotonic deadline for the worker once close() is called
        self._in_outage = False
        self.published = 0  # delivered: acknowledged by the broker / answered 2xx by the webhook
        self.dropped = 0  # discarded unsent because the queue was full (oldest first)
        self.failed = 0  # could not be delivered: unserialisable, rejected, timed out, unsent at close

    def _enqueue(self, event: dict) -> None:
        try:  # strict JSON: NaN/Infinity would break most consumers' parsers
            payload = json.dumps(event, allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            log.warning("%s sink: event not sent, it is not strict JSON (%s)", self.kind, exc)
            self._count_failed(1)
            return
        with self._cond:
            if self._closing:  # a write after close() is lost: count it, don't raise into the loop
                self.failed += 1
                lost = True
            else:
                lost = len(self._queue) >= self._queue_size
                if lost:  # the oldest goes: for live monitoring the newest events matter most
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(payload)
                self._cond.notify_all()
        if lost:
            self._record_errors(1)

    def _count_failed(self, count: int) -> None:
        if count:
            with self._cond:
                self.failed += count
            self._record_errors(count)

    def _record_errors(self, count: int) -> None:
        if self._status is not None:
            for _ in range(count):
                self._status.record_sink_error(self.kind)

    def _outage(self, message: str) -> None:
        """Warn at the start of an outage only, not for every event or retry in it."""
        with self._cond:
            first, self._in_outage = not self._in_outage, True
        if first:
            log.warning(message)

    def _recovered(self, message: str) -> None:
        with self._cond:
            was_out, self._in_outage = self._in_outage, False
        if was_out:
            log.warning(message)

    def _begin_close(self, timeout: float) -> float:
        """Stop accepting events; return the monotonic deadline by which close() must return."""
        now = time.monotonic()
        deadline = now + max(0.0, timeout)
        with self._cond:
            self._closing = True
            # Leave a little of the budget for disconnecting and joining after the drain.
            self._drain_until = now + max(0.0, timeout) * 0.8
            self._cond.notify_all()
        return deadline

    def _unsent_at_close(self) -> int:
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
        return left


class MqttSink(_QueuedSink):
    """Publish every event as JSON with QoS 1 to `topic` on an MQTT broker, reconnecting with backoff."""

    kind = "mqtt"
    WINDOW = 100  # messages handed to paho but not yet acknowledged: bounds paho's own queue too
    RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
    CONNECT_TIMEOUT_S = 3.0  # per attempt; an unreachable host must not hold close() long
    KEEPALIVE_S = 30

    def __init__(self, host: str, port: int = 1883, topic: str = "winclip/events", status: LiveStatus | None = None,
                 client_id: str | None = None, queue_size: int = 1000):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise RuntimeError(f"--mqtt needs paho-mqtt: {LIVE_EXTRA}") from None
        super().__init__(status, queue_size)
        self.host, self.port, self.topic = host, port, topic
        self._mqtt = mqtt
        self._connected = False
        self._handed = 0  # given to client.publish()
        self._settled = 0  # of those: acknowledged, refused or rejected; the rest await a PUBACK
        self.connect_failures = 0  # connection attempts that failed or were refused
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        self._client.connect_timeout = self.CONNECT_TIMEOUT_S
        self._client.max_inflight_messages_set(self.WINDOW)
        self._client.reconnect_delay_set(self.RECONNECT_MIN_S, self.RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        # connect_async + loop_start: the first attempt runs on paho's thread, so a broker that is
        # down at start neither blocks nor raises here; paho retries with the backoff above.
        self._client.connect_async(host, port, keepalive=self.KEEPALIVE_S)
        self._client.loop_start()
        self._worker = threading.Thread(target=self._publish_loop, name=f"mqtt-sink-{host}:{port}", daemon=True)
        self._worker.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def write(self, event: dict) -> None:
        """Queue one event; never blocks on, or raises for, the broker."""
        self._enqueue(event)

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued within `timeout`, disconnect, stop both threads; count the rest failed."""
        deadline = self._begin_close(timeout)
        self._worker.join(max(0.0, self._drain_until - time.monotonic()) + 0.05)
        self._client.disconnect()
        # loop_stop() joins paho's thread without a timeout; a connect attempt in progress could hold
        # it for CONNECT_TIMEOUT_S, so stop it from a helper thread and wait only until the deadline.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-sink-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.05, deadline - time.monotonic()))
        self._worker.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            awaiting_ack = max(0, self._handed - self._settled)
            self._settled = self._handed  # counted now, so never twice
        self._count_failed(self._unsent_at_close() + awaiting_ack)

    # --- the publishing thread
    def _publish_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    awaiting_ack = self._handed - self._settled
                    # Closing: stop when all is acknowledged, at the deadline, or at once when the broker
                    # is known to be down (waiting out the reconnect backoff would only delay shutdown).
                    if self._closing and (time.monotonic() >= self._drain_until
                                          or (not self._queue and awaiting_ack <= 0)
                                          or (self._in_outage and not self._connected)):
                        return
                    if self._queue and self._connected and awaiting_ack < self.WINDOW:
                        payload = self._queue.popleft()
                        self._handed += 1
                        break
                    self._cond.wait(0.1 if self._closing else 1.0)
            info = self._client.publish(self.topic, payload, qos=1)
            # NO_CONN: the connection dropped just now; paho keeps QoS 1 messages and resends them on reconnect.
            if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                log.warning("mqtt sink: publish rejected by the client (%s)", self._mqtt.error_string(info.rc))
                with self._cond:
                    self._settled += 1
                self._count_failed(1)

    # --- paho callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            with self._cond:
                self.connect_failures += 1
            self._outage(f"MQTT broker {self.address} refused the connection ({reason_code}); "
                         f"events queue (up to {self._queue_size}, oldest dropped) while the sink retries")
            return
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        self._recovered(f"MQTT broker {self.address} connected again; publishing the queued events")

    def _on_connect_fail(self, client, userdata) -> None:
        with self._cond:
            self.connect_failures += 1
        self._outage(f"MQTT broker {self.address} unreachable; events queue (up to {self._queue_size}, "
                     f"oldest dropped) while the sink reconnects with backoff")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            closing = self._closing
        if not closing:
            self._outage(f"MQTT broker {self.address} disconnected ({reason_code}); reconnecting with backoff")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        failed = reason_code.is_failure  # MQTT 5 brokers may refuse a message in the PUBACK
        with self._cond:
            self._settled += 1
            if failed:
                self.failed += 1
            else:
                self.published += 1
            self._cond.notify_all()
        if failed:
            self._record_errors(1)


def check_webhook_url(url: str) -> str:
    """The URL if it is http(s) with a host; ValueError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http:// or https:// with a host, got {url!r}")
    return url


class WebhookSink(_QueuedSink):
    """POST events (by default the anomalous ones only) as JSON to an http(s) URL from a background thread."""

    kind = "webhook"

    def __init__(self, url: str, timeout: float = 2.0, only_anomalous: bool = True, status: LiveStatus | None = None,
                 queue_size: int = 1000):
        check_webhook_url(url)
        super().__init__(status, queue_size)
        self.url, self.timeout, self.only_anomalous = url, timeout, only_anomalous
        # No redirects: urllib would turn a redirected POST into a body-less GET; a 3xx counts as a failure.
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._worker = threading.Thread(target=self._post_loop, name="webhook-sink", daemon=True)
        self._worker.start()

    def write(self, event: dict) -> None:
        """Queue the event if it is anomalous (or if only_anomalous is off); never blocks or raises."""
        if self.only_anomalous and event.get("anomalous") is not True:
            return
        self._enqueue(event)

    def close(self, timeout: float = 5.0) -> None:
        """POST what is queued within `timeout`, stop the thread; count the rest failed."""
        deadline = self._begin_close(timeout)
        self._worker.join(max(0.0, deadline - time.monotonic()))
        self._count_failed(self._unsent_at_close())

    def _post_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing and (not self._queue or time.monotonic() >= self._drain_until):
                    return
                payload = self._queue.popleft()
                timeout = self.timeout if not self._closing else max(0.05, min(self.timeout,
                                                                             self._drain_until - time.monotonic()))
            problem = self._post(payload, timeout)
            if problem is None:
                with self._cond:
                    self.published += 1
                self._recovered(f"webhook {self.url} answering again")
            else:
                self._count_failed(1)
                self._outage(f"webhook {self.url} failed ({problem}); later failures are counted, not logged")

    def _post(self, payload: bytes, timeout: float) -> str | None:
        """POST one event; None when the receiver answered 2xx, else what went wrong."""
        request = urllib.request.Request(self.url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read(65536)  # drain a little so the connection closes cleanly
                code = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets; ValueError: a malformed response
            reason = getattr(exc, "reason", exc)
            return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        return None if 200 <= code < 300 else f"HTTP {code}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx code
