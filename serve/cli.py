"""`winclip-serve`: a bundle's engine served to many edge clients through Triton Inference Server.

Starts a real Triton server (PyTriton) with the engine inside, or, with
--write-repo, writes a standard Triton model repository for NVIDIA's own
server images and exits. Edge clients connect with
`winclip-inspect BUNDLE --engine triton://HOST:GRPC_PORT/MODEL`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click

from winclip.runtime.command import CONTEXT, engine_choice_of, engine_options, one_line_errors, setup_logging
from winclip.runtime.defaults import SERVED_MODEL_NAME, TRITON_PORTS
from winclip.serve import defaults
from winclip.serve.repository import DEFAULT_TARGET, TARGETS, RepositoryOptions

log = logging.getLogger("winclip.serve")  # not __name__: run as a script, that is "__main__"

PORT = click.IntRange(1, 65535)
# the options that are RepositoryOptions' fields of the same name, and ServeOptions' but for precision (the engine's)
BATCHING = ("precision", "model_name", "max_batch", "max_queue_delay_us", "dynamic_batching", "instances")
SERVED = (*BATCHING[1:], "backend", "host", "http_port", "grpc_port", "metrics_port")
SERVER_ONLY = ("provider", "backend", "remeasure", "threads", "inference_precision", "host", "http_port", "grpc_port",
               "metrics_port", "no_cache")


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@engine_options("Engine to serve: auto = fp16 on CUDA, a guarded int8 on CPU, else fp32.",
                help_more=" The engine runs here, so not triton.")
@click.option("--model-name", default=SERVED_MODEL_NAME,
              help="The model's name in Triton (the MODEL of --engine URLs).")
@click.option("--max-batch", type=click.IntRange(min=1), default=defaults.MAX_BATCH,
              help="Most frames one engine call takes, across clients (Triton's max_batch_size).")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=defaults.MAX_QUEUE_DELAY_US,
              help="Microseconds a request may wait for others to join its batch.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True,
              help="Join requests of different clients into one engine call.")
@click.option("--instances", type=click.IntRange(min=1), default=defaults.INSTANCES,
              help="Engine calls that may run at once (they share one session).")
@click.option("--host", default=defaults.HOST, help="Address the endpoints bind to (0.0.0.0: every interface).")
@click.option("--http-port", type=PORT, default=TRITON_PORTS["http"], help="Triton's HTTP port (health, inference).")
@click.option("--grpc-port", type=PORT, default=TRITON_PORTS["grpc"], help="Triton's gRPC port (what clients use).")
@click.option("--metrics-port", type=PORT, default=TRITON_PORTS["metrics"], help="Triton's Prometheus metrics port.")
@click.option("--no-cache", is_flag=True, help="Neither use nor write the optimised-graph cache.")
@click.option("--write-repo", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write a Triton model repository (DIR/MODEL/config.pbtxt, DIR/MODEL/VERSION/model.onnx, the "
                   "bundle's manifest and text) for NVIDIA's server images, and exit without serving.")
@click.option("--repo-target", type=click.Choice(TARGETS), default=DEFAULT_TARGET,
              help="With --write-repo: where NVIDIA's server runs the engine (onnxruntime on GPU or CPU, or its "
                   "TensorRT or OpenVINO accelerator).")
@click.pass_context
def main(ctx, bundle, write_repo, **values):
    """Serve the chosen engine of BUNDLE through Triton Inference Server.

    \b
    Edge clients send preprocessed batches and score locally:
      winclip-inspect BUNDLE --source ... --engine triton://HOST:GRPC_PORT/MODEL
    The model's version carries the engine's sha256; a client holding another
    bundle is refused. Triton batches requests of all clients together (up to
    --max-batch), and serves /v2/health/ready on the HTTP port and Prometheus
    metrics on the metrics port. SIGTERM or SIGINT: in-flight requests finish,
    then it exits 0.
    """
    setup_logging()
    if write_repo is not None:
        server_only = [n for n in SERVER_ONLY if ctx.get_parameter_source(n).name == "COMMANDLINE"]
        if server_only:
            flag = "--" + server_only[0].replace("_", "-")
            raise click.UsageError(f"{flag} applies to a running server, not to --write-repo")
        _write_repo(bundle, write_repo,
                    RepositoryOptions(target=values["repo_target"], **{name: values[name] for name in BATCHING}))
        return
    if ctx.get_parameter_source("repo_target").name == "COMMANDLINE":
        raise click.UsageError("--repo-target needs --write-repo DIR")
    if len({values["http_port"], values["grpc_port"], values["metrics_port"]}) < 3:
        raise click.UsageError("--http-port, --grpc-port and --metrics-port must differ")
    if values["backend"] == "triton":
        raise click.UsageError("--backend triton would serve a served engine; choose a local backend")
    from winclip.runtime.backends import backend_class

    with one_line_errors():
        backend_class(values["backend"])  # the chosen backend's library, named with its extra when missing
    from winclip.serve.server import EngineServer, ServeOptions

    options = ServeOptions(engine=engine_choice_of(values, cache=not values["no_cache"]),
                           **{name: values[name] for name in SERVED})
    stop = threading.Event()
    received: list[str] = []

    def handler(signum, frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    with one_line_errors():
        server = EngineServer(bundle, options)
        log.info("starting Triton for %s", server.describe())
        server.start()
    try:
        log.info("ready: %s", server.address)
        alive = server.serve_until(stop)
    finally:
        log.info("stopping (%s): in-flight requests finish first", received[0] if received else "Triton ended")
        server.stop()
        for signum, old in previous.items():
            signal.signal(signum, old)
    if not alive:
        raise click.ClickException("Triton stopped on its own; see its log above")
    log.info("stopped")


def _write_repo(bundle, repo, options: RepositoryOptions):
    """winclip-serve --write-repo: a Triton model repository of the bundle's engine, as the options say."""
    from winclip.runtime.backends import backend_class

    with one_line_errors():
        backend_class("onnxruntime")  # the graph's input and output types are read by onnxruntime
    from winclip.serve.repository import write_repository

    with one_line_errors():
        folder = write_repository(bundle, repo, options)
    click.echo(str(folder))


if __name__ == "__main__":
    sys.exit(main())
