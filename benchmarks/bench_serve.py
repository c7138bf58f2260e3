"""Cameras as clients of one Triton server, beside the local runtime, in one run on one box.

For 1, 2, 4, 8 clients (threads, each a Detector with --engine triton://..., one
frame per request as a live camera sends it): frames/s of all clients together,
p50/p95 latency of a frame (preprocess, request, scoring), and the mean batch
Triton ran (from its own metrics), with and without dynamic batching. Beside it,
the local in-process runtime scoring the same number of cameras the way
winclip-inspect does with several --source: one batch per round.

Server and clients share this machine's cores, so a served row pays for both;
on a plant the clients run on the edge boxes. Frames are real ELPV solar cells.

    python -m winclip.benchmarks.bench_serve BUNDLE [--clients 1,2,4,8] [--frames 40] [--out DIR]

The server runs in WINCLIP_SERVE_PYTHON (or this interpreter if it has PyTriton). Results: a Markdown table on
stdout and OUT/bench_serve.json / .md, with the CPU model, its ISA flags and the load average before and after.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import click

from winclip.benchmarks.bench_cli import machine, portable_path
from winclip.benchmarks.measure import _percentile as percentile
from winclip.benchmarks.results import write_results
from winclip.calibration.evaluation.datasets import elpv_images
from winclip.runtime.command import CONTEXT
from winclip.runtime.images import read_image
from winclip.serve import defaults
from winclip.serve.process import ServeProcess, serve_python

def row(mode: str, clients: int, frames: int, wall_s: float, latencies_s: list[float], batch: float | None) -> dict:
    ms = [1000.0 * t for t in latencies_s]
    return {"mode": mode, "clients": clients, "frames": frames, "fps": round(frames / wall_s, 3),
            "p50_ms": round(percentile(ms, 0.5), 2), "p95_ms": round(percentile(ms, 0.95), 2),
            "mean_batch": None if batch is None else round(batch, 2)}


def run_local(bundle: Path, object_name: str, images: list, clients: int, rounds: int, warmup: int) -> dict:
    """One box scoring `clients` cameras: one batch of `clients` frames per round, as winclip-inspect does."""
    from winclip.runtime.detector import Detector

    detector = Detector.from_bundle(bundle, object=object_name)
    batches = [[images[(r * clients + c) % len(images)] for c in range(clients)] for r in range(rounds + warmup)]
    for batch in batches[:warmup]:
        detector(batch)
    latencies, t0 = [], time.perf_counter()
    for batch in batches[warmup:]:
        t = time.perf_counter()
        detector(batch)
        latencies += [time.perf_counter() - t] * clients  # every frame of the round waits for the whole batch
    result = row("local, in process", clients, clients * rounds, time.perf_counter() - t0, latencies, float(clients))
    return {**result, "engine": detector.backend.describe()}


def run_served(server: ServeProcess, bundle: Path, object_name: str, images: list, clients: int, frames: int,
               warmup: int, mode: str) -> dict:
    """`clients` threads, each a Detector of the served engine sending one frame per request."""
    from winclip.runtime.detector import Detector

    detectors = [Detector.from_bundle(bundle, object=object_name, engine=server.engine_url, self_check=False)
                 for _ in range(clients)]
    for d in detectors:
        for i in range(warmup):
            d(images[i % len(images)])
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def camera(c: int) -> None:
        try:
            start.wait()
            for i in range(frames):
                t = time.perf_counter()
                detectors[c](images[(c * frames + i) % len(images)])
                latencies[c].append(time.perf_counter() - t)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=camera, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    before = server.metrics()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = server.metrics()
    engine = detectors[0].backend.describe()
    for d in detectors:
        d.backend.close()
    if failures:
        raise failures[0]
    executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0.0)
    inferences = after["nv_inference_count"] - before.get("nv_inference_count", 0.0)
    result = row(mode, clients, clients * frames, wall, [x for lat in latencies for x in lat],
                 inferences / executions if executions else None)
    return {**result, "engine": engine}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"CPU: {m.get('cpu', '?')} ({m['cores']} cores; {', '.join(m.get('cpu_features', [])) or 'no AVX2'}); "
             f"onnxruntime {m['onnxruntime']}; load average before/after: "
             f"{result['load_before']} / {result['load_after']}" + (f"; {result['note']}" if result["note"] else ""),
             "", "| runtime | clients | frames/s | p50 ms | p95 ms | mean batch |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        batch = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.2f}"
        lines.append(f"| {r['mode']} | {r['clients']} | {r['fps']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
                     f"| {batch} |")
    return "\n".join(lines)


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--clients", default="1,2,4,8", help="Client counts, comma separated.")
@click.option("--object", "object_name", default=None, help="Object to score. [default: the bundle's first]")
@click.option("--frames", type=click.IntRange(min=2), default=40, help="Timed frames per client.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, help="Untimed frames per client first.")
@click.option("--max-batch", type=click.IntRange(min=1), default=defaults.MAX_BATCH, help="winclip-serve --max-batch.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=defaults.MAX_QUEUE_DELAY_US,
              help="winclip-serve's queue delay.")
@click.option("--server-python", default=None, help="Interpreter with the serve extra installed. [default: serve_python()]")
@click.option("--note", default="", help="Recorded with the results (say 'under load' on a shared box).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write bench_serve.json and .md here.")
def main(bundle, clients, object_name, frames, warmup, max_batch, max_queue_delay_us, server_python, note, out):
    """Frames/s and latency of cameras as clients of one Triton server, beside the local runtime."""
    counts = [int(c) for c in clients.split(",") if c.strip()]
    python = server_python or serve_python()
    if python is None:
        raise click.ClickException("no interpreter with nvidia-pytriton: set WINCLIP_SERVE_PYTHON or --server-python")
    from winclip.runtime.bundle import Bundle

    object_name = object_name or Bundle.load(bundle).objects[0]
    images = [read_image(p) for p in elpv_images(max(16, max(counts) * 2), start=100)]
    result = {"bundle": portable_path(bundle), "machine": machine(), "note": note, "frames_per_client": frames,
              "max_batch": max_batch, "max_queue_delay_us": max_queue_delay_us, "rows": []}
    result["load_before"] = [round(x, 2) for x in os.getloadavg()]
    for c in counts:
        result["rows"].append(run_local(bundle, object_name, images, c, frames, warmup))
        click.echo(f"local {c}: {result['rows'][-1]}", err=True)
    settings = {"served, dynamic batching": ["--max-batch", str(max_batch), "--max-queue-delay-us",
                                             str(max_queue_delay_us)],
                "served, no dynamic batching": ["--max-batch", str(max_batch), "--no-dynamic-batching"]}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as logs:
        for mode, args in settings.items():
            server = ServeProcess(python, bundle, Path(logs) / mode.replace(" ", "").replace(",", "-"), *args)
            server.start()
            try:
                for c in counts:
                    result["rows"].append(run_served(server, bundle, object_name, images, c, frames, warmup, mode))
                    click.echo(f"{mode} {c}: {result['rows'][-1]}", err=True)
            finally:
                server.close()
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    table = markdown(result)
    click.echo(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(result, table, out / "bench_serve.json", out / "bench_serve.md")


if __name__ == "__main__":
    main()
