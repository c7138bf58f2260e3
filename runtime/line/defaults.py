"""The live loop's defaults: the one place each is stated (the CLI's options read them from here)."""

from __future__ import annotations

from winclip.runtime.defaults import BACKOFF_S, OPEN_ATTEMPTS  # noqa: F401  (a served engine follows the same rules)
from winclip.runtime.errors import install_hint

LIVE_EXTRA = install_hint("live")  # what to install for the live page and the plant sinks, named when missing

# --- saved overlays
OVERLAY_CHOICES = ("anomalous", "all", "none")  # which scored frames get a saved overlay
OVERLAY_FOLDER = "overlays"  # inside OUT: the saved overlays, where the page and the review desk find them again

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
WEBHOOK_RETRY_S = BACKOFF_S  # a failed POST is retried on the reconnect schedule: the first wait, doubling up to the longest
SINK_CLOSE_TIMEOUT_S = 5.0  # at the end of a run, how long each sink may take to deliver what it holds (--flush-timeout)
OUTAGE_QUIET_S = 60.0  # a sink's peer that fails again within this long after a warning is counted, not warned

# --- the live page
SERVE_HOST = "127.0.0.1"  # the page binds here unless told otherwise
PREVIEW_WIDTH = 640  # px: the page's overlays are shrunk to this before drawing and encoding
PREVIEW_INTERVAL_S = 0.2  # per source; anomalous frames are always shown at once
PREVIEW_QUALITY = 80  # JPEG quality of the page's overlays (the live preview and the gallery share one picture)

# --- the loop
MAX_FAILED_BATCHES = 20  # in a row: the engine itself is broken, not one frame
GATHER_S = 0.02  # how long a round waits for the other sources' frames to join its batch

# --- the operator's station: history, teaching, drift, write access (docs/operator.md)
TREND_WINDOW_S = 600.0  # the page's score trend covers the last this-many seconds per source
TREND_BUCKET_S = 2.0  # ... in buckets of this many seconds (min, mean, max, count per bucket)
GALLERY_PICTURES = 60  # newest anomalous frames whose overlay and original pixels stay in memory
GALLERY_ORIGINALS_MB = 256.0  # at most this much memory for those originals (the oldest go first)
GALLERY_INDEX = 5000  # anomalous frames the gallery can page back through (pictures from OUT/overlays)
GALLERY_PAGE = 12  # gallery items per page
DRIFT_WINDOW = 200  # scores of frames judged normal, per source, compared with the profile's reference
DRIFT_MIN_FRAMES = 50  # no drift verdict before this many
DRIFT_ALARM = 0.5  # two-sample Kolmogorov-Smirnov distance at which a drift episode starts (and p < DRIFT_ALPHA)
DRIFT_CLEAR = 0.3  # ... and at or below which it ends
DRIFT_ALPHA = 1e-3
REVIEW_GAP_FRAMES = 2  # a flagged frame joins its source's episode after at most this many frames judged normal ...
REVIEW_GAP_S = 10.0  # ... and within this many seconds of the episode's last flagged frame (docs/operator.md)
REVIEW_EPISODES = 2000  # episodes the review desk keeps (OUT/review.json; the oldest go first)
REVIEW_HISTORY = 500  # drift and outage entries kept, each
REVIEW_ORIGINALS = 30  # newest episodes whose best frame's original pixels stay in memory (for labels) ...
REVIEW_ORIGINALS_MB = 128.0  # ... within this much memory
REVIEW_FLUSH_S = 2.0  # new frames reach OUT/review.json within this long (reviews and labels at once)
REVIEW_LISTING = 200  # episodes one listing returns
OPERATOR_TOKEN_ENV = "WINCLIP_OPERATOR_TOKEN"  # the operator token, when not in --operator-token-file
MIN_TOKEN_CHARS = 16
MAX_POST_BYTES = 32 << 20  # largest request body a write may send (an uploaded frame)
TEACH_QUEUE = 8  # teach/undo requests waiting for the worker; beyond, refused (busy)

# --- teaching with a preview, and a page that never looks live when it is not (docs/operator.md)
RECENT_FRAMES = 200  # scored frames per source whose graph outputs stay, to preview a teach on them
RECENT_MB = 512.0  # at most this much for those outputs in all (float16; about 0.85 MB a frame with ViT-B-16+)
PREVIEW_TTL_S = 300.0  # a teach preview older than this cannot be confirmed: the line has moved on
PREVIEWS_KEPT = 16  # previews waiting for a confirmation (the oldest are forgotten); each holds its part and scores
PAGE_POLL_S = 1.0  # the page asks for /status.json this often; no answer within 2 polls: "run not answering"
PAGE_STALE_FRAME_S = 10.0  # a source whose newest frame is older than this (by the run's clock) is shown stale
OVERLAYS_KEPT = 4  # newest overlays per source the page may still fetch by sequence number
