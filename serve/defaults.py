"""winclip-serve's defaults: the one place each is stated (the options read them from here).

Ports, the model name and the request timeout are shared with the edge client and live in
winclip.runtime.defaults.
"""

from __future__ import annotations

HOST = "127.0.0.1"  # the server binds here unless told otherwise (0.0.0.0: every interface)
MAX_BATCH = 8  # frames per engine call, across clients
MAX_QUEUE_DELAY_US = 1000  # how long a request may wait for others to join its batch
INSTANCES = 1  # engine instances (batches that may run at once); they share one session
EXIT_TIMEOUT_S = 30  # on SIGTERM: how long in-flight requests may take to finish
