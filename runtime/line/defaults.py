"""The live loop's defaults: the one place each is stated (the CLI's options read them from here)."""

from __future__ import annotations

from winclip.runtime.defaults import BACKOFF_S, OPEN_ATTEMPTS  # noqa: F401  (a served engine follows the same rules)

# --- saved overlays
OVERLAY_CHOICES = ("anomalous", "all", "none")  # which scored frames get a saved overlay

# --- sources
STALL_TIMEOUT_S = 5.0  # no frame for this long: the source counts as lost and is reopened
MAX_READ_FAILURES = 5  # failed reads in a row that mean a live source is lost
LOST_AFTER = 4  # failed reopen attempts after which health says "lost" (it is still retried)

# --- event files
ROTATE_MB = 100.0  # an event file that would pass this size is rotated
ROTATE_KEEP = 5  # rotated event files kept

# --- plant sinks
MQTT_PORT = 1883
MQTT_TOPIC = "winclip/events"
SINK_QUEUE = 1000  # events held per sink while its peer is away (the oldest are dropped beyond)
WEBHOOK_TIMEOUT_S = 2.0
SINK_CLOSE_TIMEOUT_S = 5.0  # at the end of a run, how long each sink may take to deliver what it holds

# --- the live page
SERVE_HOST = "127.0.0.1"  # the page binds here unless told otherwise
PREVIEW_WIDTH = 640  # px: the page's overlays are shrunk to this before drawing and encoding
PREVIEW_INTERVAL_S = 0.2  # per source; anomalous frames are always shown at once

# --- the loop
MAX_FAILED_BATCHES = 20  # in a row: the engine itself is broken, not one frame
GATHER_S = 0.02  # how long a round waits for the other sources' frames to join its batch
