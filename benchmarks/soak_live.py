"""Soak of the live loop: resident memory over thousands of frames from a live MJPEG stream.

    python -m winclip.benchmarks.soak_live BUNDLE [--frames 2000] [--fps 60] [--json OUT.json]

A stream of real images (the simulated textiles of conformal-clip-data) is
served as multipart/x-mixed-replace JPEG on 127.0.0.1, the way many IP
cameras serve one, and scored by the same loop `winclip-inspect` runs:
reader thread, newest-frame slot, one batch per round, a size-rotated event
log, an overlay saved for every frame and the live page's preview. VmRSS from
/proc/self/status is sampled every 100 frames; the table and the first,
after-warm-up, last and highest values are printed, and the process's peak
(VmHWM: start-up and memory build included).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import cv2
import numpy as np

from winclip.benchmarks.results import write_results
from winclip.benchmarks.rss import rss_mib, status as proc_status
from winclip.runtime.command import CONTEXT, Command, Finite, Whole

SAMPLE_EVERY = 100  # frames
WARMUP_FRAMES = 200  # allocator pools, ONNX Runtime arenas and caches fill up before this


class MjpegServer:
    """A live camera as many IP cameras serve one: multipart/x-mixed-replace JPEG parts over HTTP on 127.0.0.1.

    Frames cycle through the images at `fps`; parts whose number is in `corrupt`
    are sent damaged. stop() drops every client and closes the port; start()
    opens the same port again. (The live-loop tests use it too.)
    """

    def __init__(self, images: list[np.ndarray], fps: float = 25.0, corrupt=()):
        self.jpegs = [cv2.imencode(".jpg", im)[1].tobytes() for im in images]
        self.fps = fps
        self.corrupt = set(corrupt)
        self.port = 0
        self.sent = 0
        self._httpd = None

    def start(self) -> "MjpegServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while not self.server.stopping:
                        n = owner.sent
                        owner.sent += 1
                        data = owner.jpegs[n % len(owner.jpegs)]
                        if n in owner.corrupt:
                            data = data[:300] + bytes(len(data) - 300)
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                        time.sleep(1.0 / owner.fps)
                except OSError:  # the client went away
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.stopping = False
        self.port = self._httpd.server_address[1]  # the same port again after a stop()
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stopping = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
            time.sleep(0.1)  # the handler threads see `stopping` and drop their clients


def soak(bundle: str | Path, frames: int = 2000, fps: float = 60.0, threads: int | None = None,
         object_name: str | None = None, shots: int = 0) -> dict:
    """Run the loop for `frames` scored frames (WinCLIP+ with `shots` normals); RSS samples and the run's numbers."""
    from winclip.calibration.evaluation.datasets import textile_images
    from winclip.runtime import Detector
    from winclip.runtime.line.events import LiveOverlayWriter
    from winclip.runtime.line.inspection import Inspection
    from winclip.runtime.line.loop import LiveLoop, LiveOutputs
    from winclip.runtime.line.sinks.event_log import RotatingEventLog
    from winclip.runtime.line.sources import parse_sources
    from winclip.runtime.line.status import LiveStatus

    images = [cv2.imread(str(p)) for kind in ("nominal", "local") for p in textile_images(kind, 8)]
    server = MjpegServer(images, fps=fps).start()
    detector = Detector.from_bundle(bundle, object=object_name, provider="cpu", threads=threads, threshold=0.0)
    if shots:
        detector.build_memory(cv2.imread(str(p)) for p in textile_images("nominal", 8 + shots)[8:])
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="winclip-soak-") as tmp:
        specs = parse_sources([server.url])
        status = LiveStatus([s.name for s in specs])
        # small files: rotation is part of the soak
        log = RotatingEventLog(Path(tmp) / "events.jsonl", max_bytes=256 << 10, keep=2)
        outputs = LiveOutputs(status, LiveOverlayWriter(Path(tmp) / "overlays"), "all", preview=True)
        t0 = time.monotonic()
        scored = [0]

        def on_event(frame, outcome, event):
            outputs(frame, outcome, event)
            if "error" in event:
                return
            scored[0] += 1
            if scored[0] == 1 or scored[0] % SAMPLE_EVERY == 0:
                snap = status.snapshot()
                samples.append({"frames": scored[0], "seconds": round(time.monotonic() - t0, 2),
                                "rss_mib": round(rss_mib(), 1), "dropped": snap["dropped"], "fps": snap["fps"]})

        inspection = Inspection(detector, [log], on_event=on_event)
        loop = LiveLoop(inspection, specs, status, max_frames=frames)
        try:
            reason = loop.run()
        finally:
            loop.close()
            log.close()
            server.stop()
        elapsed = time.monotonic() - loop.started_at
        snap = status.snapshot()
        overlays = sum(1 for _ in (Path(tmp) / "overlays").rglob("*.jpg"))
        rotations = log.rotations
    after_warmup = next((s for s in samples if s["frames"] >= WARMUP_FRAMES), samples[-1])
    return {"frames": snap["scored"], "errors": snap["errors"], "dropped": snap["dropped"], "reason": reason,
            "seconds": round(elapsed, 1), "fps": round(snap["scored"] / elapsed, 1), "overlays": overlays,
            "log_rotations": rotations, "latency_ms": snap["latency_ms"], "samples": samples,
            "rss_mib": {"first": samples[0]["rss_mib"], "after_warmup": after_warmup["rss_mib"],
                        "warmup_frames": after_warmup["frames"], "last": samples[-1]["rss_mib"],
                        "max": max(s["rss_mib"] for s in samples),
                        "growth_after_warmup": round(samples[-1]["rss_mib"] - after_warmup["rss_mib"], 1),
                        "peak": round(proc_status()["VmHWM"], 1)},
            "engine": detector.engine.file, "shots": shots}


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--frames", type=Whole(SAMPLE_EVERY, 10**7), default=2000, help="Frames to score.")
@click.option("--fps", type=Finite(1.0, 1000.0), default=60.0, help="Frame rate of the served stream.")
@click.option("--threads", type=Whole(1, 1024), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--object", "object_name", default=None, help="Object whose text embeddings to use.")
@click.option("--shots", type=click.IntRange(min=0), default=0,
              help="WinCLIP+ with this many normal textiles (not among the streamed ones) in the memory.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the results here.")
def main(bundle, frames, fps, threads, object_name, shots, json_out):
    """Soak the live loop on BUNDLE and report resident memory every 100 frames."""
    from winclip.runtime.command import setup_logging

    setup_logging()
    result = soak(bundle, frames, fps, threads, object_name, shots)
    click.echo(f"{'frames':>7} {'seconds':>8} {'RSS MiB':>8} {'dropped':>8} {'fps':>7}")
    for s in result["samples"]:
        click.echo(f"{s['frames']:>7} {s['seconds']:>8.1f} {s['rss_mib']:>8.1f} {s['dropped']:>8} {s['fps']:>7.1f}")
    rss = result["rss_mib"]
    click.echo(f"RSS MiB: first {rss['first']}, after warm-up ({rss['warmup_frames']} frames) {rss['after_warmup']}, "
               f"last {rss['last']}, max {rss['max']}; growth after warm-up {rss['growth_after_warmup']}; "
               f"process peak (VmHWM) {rss['peak']}")
    click.echo(f"{result['frames']} frames in {result['seconds']} s ({result['fps']} fps), "
               f"{result['dropped']} dropped, "
               f"{result['errors']} errors, {result['overlays']} overlays, {result['log_rotations']} log rotations; "
               f"p50/p95 {result['latency_ms']['p50']}/{result['latency_ms']['p95']} ms")
    write_results(result, None, json_out)


if __name__ == "__main__":
    sys.exit(main())
