"""The MQTT sink: every event as JSON with QoS 1 to a broker (paho-mqtt, from the [live] extra)."""

from __future__ import annotations

import logging
import threading
import time

import click

from winclip.runtime.errors import MissingExtra
from winclip.runtime.line import defaults
from winclip.runtime.line.sinks.base import QueuedSink, SinkKind, parse_host_port
from winclip.runtime.line.status import LiveStatus

log = logging.getLogger(__name__)


class MqttSink(QueuedSink):
    """Publish every event as JSON with QoS 1 to `topic` on an MQTT broker, reconnecting with backoff."""

    kind = "mqtt"
    WINDOW = 100  # messages handed to paho but not yet acknowledged: bounds paho's own queue too
    RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
    CONNECT_TIMEOUT_S = 3.0  # per attempt; an unreachable host must not hold close() long
    KEEPALIVE_S = 30

    def __init__(self, host: str, port: int = defaults.MQTT_PORT, topic: str = defaults.MQTT_TOPIC,
                 status: LiveStatus | None = None,
                 client_id: str | None = None, queue_size: int = defaults.SINK_QUEUE):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise MissingExtra(f"--mqtt needs paho-mqtt: {defaults.LIVE_EXTRA}") from None
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

    def _in_flight(self) -> int:
        return max(0, self._handed - self._settled)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def write(self, event: dict) -> None:
        """Queue one event; never blocks on, or raises for, the broker."""
        self._enqueue(event)

    def close(self, timeout: float = defaults.SINK_CLOSE_TIMEOUT_S) -> None:
        """Publish what is queued within `timeout` (a broker that is down is retried every second meanwhile),
        disconnect, stop both threads; count the rest failed."""
        self._client.reconnect_delay_set(self.RECONNECT_MIN_S, self.RECONNECT_MIN_S)  # no long backoff at the end
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
                    # Closing: stop when all is acknowledged or at the deadline (a broker that is down may
                    # come back within it; what is left is counted, and the summary says so).
                    if self._closing and (time.monotonic() >= self._drain_until
                                          or (not self._queue and awaiting_ack <= 0)):
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



class Mqtt(SinkKind):
    name = "mqtt"
    primary = "mqtt"  # the option that asks for this sink
    options = (
        click.option("--mqtt", default=None, metavar="HOST[:PORT]",
                     help="Live: publish every event to this MQTT broker (QoS 1, reconnecting; needs "
                          "the live extra)."),
        click.option("--mqtt-topic", default=defaults.MQTT_TOPIC, help="Live: the MQTT topic for --mqtt."),
    )
    requires = {"mqtt_topic": "mqtt"}  # an option given without the one it refines is a usage error

    def plan(self, values: dict, out):
        if values["mqtt"] is None:
            return None
        try:
            host, port = parse_host_port(values["mqtt"], defaults.MQTT_PORT)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--mqtt'") from None
        return host, port, values["mqtt_topic"]

    def open(self, plan, status: LiveStatus):
        host, port, topic = plan
        sink = MqttSink(host, port, topic=topic, status=status)
        return [(sink, f"MQTT {sink.address}")]


KIND = Mqtt()
