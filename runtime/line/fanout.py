"""The one writer to a run's sinks: every event of a run, in the order it happened, to every sink that takes it.

Frame events (the Inspection), source notices (the live loop), drift and profile
changes (the operator desk), reloads and the run's start and stop (the app) all
go through one `EventFanout`. It holds a lock, so events from any thread reach
each sink whole and in one order, and it counts what passed by kind, for the
run's summary. A sink may take only some cameras' events (a camera with its own
MQTT topic or webhook): an event of one source goes only to the sinks that take
it; an event of no source (the run's own) goes to every sink.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from winclip.runtime.line.interfaces import EventWriter


@dataclass(frozen=True)
class Route:
    """A sink and the sources whose events it takes: `only` (None: any source) minus `besides`."""

    sink: EventWriter
    only: frozenset[str] | None = None
    besides: frozenset[str] = frozenset()

    def takes(self, source: str | None) -> bool:
        if source is None:
            return True
        return (self.only is None or source in self.only) and source not in self.besides


class EventFanout:
    """Ordered, counted delivery of events to sinks (see the module docstring)."""

    def __init__(self, sinks=()):
        self._routes: list[Route] = [Route(sink) for sink in sinks]
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # events written, by their "event" kind ("frame" for frame events)

    @classmethod
    def of(cls, sinks) -> "EventFanout":
        """A fanout as it is, or one over a list of sinks."""
        return sinks if isinstance(sinks, EventFanout) else cls(sinks)

    def add(self, sink: EventWriter, only=None, besides=()) -> None:
        """Route the events of `only` (None: every source) except `besides` to `sink`."""
        with self._lock:
            self._routes.append(Route(sink, None if only is None else frozenset(only), frozenset(besides)))

    def retarget(self, sink: EventWriter, besides=()) -> None:
        """The sources `sink` no longer takes (a camera that now has its own setting of it), in place."""
        with self._lock:
            self._routes = [Route(r.sink, r.only, frozenset(besides)) if r.sink is sink else r for r in self._routes]

    def remove(self, sink: EventWriter) -> None:
        with self._lock:
            self._routes = [route for route in self._routes if route.sink is not sink]

    @property
    def sinks(self) -> list[EventWriter]:
        return [route.sink for route in self._routes]

    def write(self, event: dict) -> None:
        source = event.get("source")
        with self._lock:
            self.counts[event.get("event", "frame")] += 1
            for route in self._routes:
                if route.takes(source):
                    route.sink.write(event)

    @property
    def written(self) -> int:
        return sum(self.counts.values())
