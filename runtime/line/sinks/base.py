"""What every plant sink shares: the `Sink` protocol, the bounded queue network sinks publish from,
the guard that keeps a failing sink from stopping the loop, and the `SinkKind` row of the sink table.

The scoring loop must never wait on the plant network, so a network sink's
`write()` only serialises the event and appends it to a bounded in-memory queue
(dropping the oldest event when full); a daemon thread per sink does the I/O. A
broker or receiver that is down, slow or refusing costs counted failures and
one warning per outage, never a stalled or crashed loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections import deque
from typing import Protocol

from winclip.runtime.errors import first_line
from winclip.runtime.line import defaults
from winclip.runtime.line.status import LiveStatus

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where events go: `write` one event (a dict, strict JSON), never blocking the loop; `close` at the end
    (delivering what it still holds within a bounded time); `stats` says what became of the events."""

    def write(self, event: dict) -> None: ...

    def close(self, timeout: float = defaults.SINK_CLOSE_TIMEOUT_S) -> None: ...

    def stats(self) -> dict[str, int]:
        """{"delivered", "dropped" (queue full, oldest first), "failed" (refused or lost), "queued" (not yet sent)}."""
        ...


def sink_report(sinks) -> str:
    """What became of each sink's events, in one clause per sink (for the run's summary line)."""
    parts = []
    for sink in sinks:
        s = sink.stats()
        words = [f"{s['delivered']:,} delivered"]
        words += [f"{s[k]:,} {label}" for k, label in (("dropped", "dropped (queue full)"), ("failed", "failed"),
                                                       ("queued", "still queued")) if s.get(k)]
        parts.append(f"{sink.name}: {', '.join(words)}")
    return "; ".join(parts)


class SinkKind:
    """One row of the sink table: the winclip-inspect options it adds, their check, and how its sinks open.

    `options` are click options (they appear in `winclip-inspect --help`);
    `plan` checks their values before anything slow starts and returns what to
    open (None when the sink was not asked for); `open` makes the sinks, each
    with the name warnings and counts use.
    """

    name = ""
    primary = ""  # the option that asks for this sink (named in "a live run needs somewhere ...")
    options: tuple = ()
    requires: dict[str, str] = {}  # option -> the option it refines: given alone, it is a usage error

    def plan(self, values: dict, out):
        raise NotImplementedError

    def open(self, plan, status: LiveStatus) -> list[tuple[Sink, str]]:
        raise NotImplementedError


class GuardedSink:
    """A sink that may fail (full disk, closed pipe, broker gone) without stopping the loop: warned once, counted."""

    def __init__(self, sink: Sink, name: str, status: LiveStatus):
        self.sink, self.name, self.status = sink, name, status
        self.failures = 0
        self.written = 0  # events handed to the sink without an error

    def write(self, event: dict) -> None:
        try:
            self.sink.write(event)
            self.written += 1
        except Exception as exc:  # any sink failure: one dead sink must never stop scoring
            self._failed("writing to", exc)

    def close(self, timeout: float = defaults.SINK_CLOSE_TIMEOUT_S) -> None:
        try:
            self.sink.close(timeout)
        except Exception as exc:
            self._failed("closing", exc)

    def stats(self) -> dict[str, int]:
        """The sink's own counts where it keeps them (network sinks), else what was written; plus failed writes."""
        own = getattr(self.sink, "stats", None)
        counts = own() if own is not None else {"delivered": self.written, "dropped": 0, "failed": 0, "queued": 0}
        return {**counts, "failed": counts.get("failed", 0) + self.failures}

    def _failed(self, doing: str, exc: Exception) -> None:
        self.failures += 1
        self.status.record_sink_error(self.name)
        if self.failures == 1:
            log.warning("%s %s failed (%s); scoring goes on (later failures of this sink are only counted)",
                        doing, self.name, first_line(exc))


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


class QueuedSink:
    """A bounded drop-oldest queue, the counters and the once-per-outage warning that network sinks share."""

    kind = "sink"  # the label in status.record_sink_error(...)

    def __init__(self, status: LiveStatus | None, queue_size: int = defaults.SINK_QUEUE):
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._status = status
        self._queue_size = queue_size
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()  # guards the queue, the counters and the flags below
        self._closing = False
        self._drain_until = float("inf")  # monotonic deadline for the worker once close() is called
        self._in_outage = False
        self._outage_failures = 0  # failed attempts in the current outage
        self._outage_warned = False  # whether the current outage was warned about
        self._last_warning = -float("inf")  # monotonic time of the last outage warning
        self._quiet_outages = 0  # outages since the last warning that were too soon to warn about again
        self.published = 0  # delivered: acknowledged by the broker / answered 2xx by the webhook
        self.dropped = 0  # discarded unsent because the queue was full (oldest first)
        self.failed = 0  # could not be delivered: unserialisable, rejected, timed out, unsent at close

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"delivered": self.published, "dropped": self.dropped, "failed": self.failed,
                    "queued": len(self._queue) + self._in_flight()}

    def _in_flight(self) -> int:
        """Events handed to the network but not yet settled (the MQTT sink's unacknowledged ones)."""
        return 0

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
        """Warn at the start of an outage only, not for every event or retry in it, and not again within
        OUTAGE_QUIET_S of the last warning (a flapping peer gets one line, with a count, not a pair per flap)."""
        now = time.monotonic()
        with self._cond:
            first, self._in_outage = not self._in_outage, True
            self._outage_failures = 1 if first else self._outage_failures + 1
            warn = first and now - self._last_warning >= defaults.OUTAGE_QUIET_S
            if first:
                self._outage_warned = warn
                if warn:
                    quiet, self._quiet_outages, self._last_warning = self._quiet_outages, 0, now
                else:
                    self._quiet_outages += 1
        if warn:
            log.warning("%s%s", message, f" ({quiet} more short outage(s) since the last warning)" if quiet else "")

    def _recovered(self, message: str) -> None:
        with self._cond:
            was_out, self._in_outage = self._in_outage, False
            failures, warned = self._outage_failures, self._outage_warned
        if was_out and warned:
            log.warning("%s after %d failed attempt(s)", message, failures)

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


