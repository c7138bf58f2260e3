"""Plant sinks: where a live run's events go, as a table.

`SINKS` lists the kinds in the order their options appear in `winclip-inspect
--help`; each row (a `SinkKind`, one module each) brings its own options, checks
them and opens its sinks. A new sink is one module in this package and one row
here; the command needs no change.
"""

from __future__ import annotations

from winclip.runtime.line.sinks import event_log, mqtt, webhook
from winclip.runtime.line.sinks.base import GuardedSink, QueuedSink, Sink, SinkKind, sink_report

SINKS: dict[str, SinkKind] = {kind.name: kind for kind in (event_log.KIND, mqtt.KIND, webhook.KIND)}

__all__ = ["SINKS", "GuardedSink", "QueuedSink", "Sink", "SinkKind", "sink_report"]
