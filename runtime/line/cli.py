"""`winclip-inspect`: score frames from a source with an engine bundle.

One --source that is a folder or glob of images: batch mode, every image once.
Anything else (camera indexes, video files, stream URLs, GStreamer pipelines,
one --source each): the live loop (loop.py) until stopped. Where live events go
is the sink table's business (sinks/): each sink brings its own options.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from pathlib import Path

import click

from winclip.runtime.command import (CONTEXT, Command, Finite, Whole, engine_choice, engine_options, one_line_errors,
                                     setup_logging)
from winclip.runtime.defaults import check_threshold
from winclip.runtime.errors import first_line
from winclip.runtime.line import defaults
from winclip.runtime.line.sinks import SINKS

log = logging.getLogger("winclip.inspect")  # not __name__: run as a script, that is "__main__"

SINK_OPTIONS = tuple(option for kind in SINKS.values() for option in kind.options)
LIVE_BASE = ("roi", "every", "max_frames", "duration", "wait_for_source", "stall_timeout", "overlays", "keep_days",
             "keep_gb", "flush_timeout", "rtsp_transport", "serve", "host", "operator_token_file")
FOLDER_ONLY = ("save_maps", "save_overlays", "batch_size", "force")
LOCK_NAME = ".winclip-inspect.lock"


def _threshold(ctx, param, value):
    try:
        return check_threshold(value, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _sink_options(command):
    """Add every sink kind's options (in table order) to the command."""
    for option in reversed(SINK_OPTIONS):
        command = option(command)
    return command


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--source", "sources", required=True, multiple=True, metavar="SOURCE",
              help="What to score. A folder or glob of images ('parts/*.png'): batch mode, each image once. "
                   "Live: a camera index (0) or device (/dev/video0), a video file (read to its end), an "
                   "rtsp:// or http(s):// stream URL, or a GStreamer pipeline (where OpenCV has GStreamer). "
                   "Repeat for several live sources: their newest frames are scored together, one batch.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder: events.jsonl, and maps/overlays. Required for a folder; live: the default "
                   "home of events.jsonl and overlays/.")
@click.option("--object", "object_name", default=None,
              help="Object whose text embeddings to use. [default: the bundle's only object]")
@click.option("--profile", type=click.Path(path_type=Path), default=None,
              help="Line profile from winclip-calibrate: its few-shot memory and thresholds (--threshold overrides).")
@click.option("--normal", "--reference", "normal_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of normal images: builds the WinCLIP+ few-shot memory.")
@click.option("--shots", type=Whole(1, 1024), default=None,
              help="Normal images to use (the first K, sorted). [default: all]")
@click.option("--save-maps", is_flag=True,
              help="Folder mode: write OUT/maps/<name>.npy, float32 at the image's resolution.")
@click.option("--save-overlays", is_flag=True,
              help="Folder mode: write OUT/overlays/<name>.png heat maps over the image.")
@click.option("--threshold", type=float, default=None, callback=_threshold,
              help="Image score in [0, 1] at or above which a part is anomalous.")
@click.option("--pixel-threshold", type=float, default=None, callback=_threshold,
              help="Map value in [0, 1] at or above which pixels form defect regions (listed for anomalous frames).")
@engine_options()
@click.option("--engine", "engine_address", default=None, metavar="URL",
              help="Run the bundle's engine on a server: triton://HOST[:PORT]/MODEL (winclip-serve or Triton, its "
                   "gRPC port); preprocessing and scoring (text, profile, thresholds) stay here. "
                   "[default: run it here]")
@click.option("--batch-size", type=Whole(1, 1024), default=1,
              help="Folder mode: frames per session call (live runs batch one frame per source).")
@click.option("--temperature", type=Finite(0.0, 100.0, min_open=True), default=None,
              help="Override the manifest's softmax temperature.")
@click.option("--max-pixels", type=Whole(1, 1 << 40), default=None,
              help="Refuse images with more decoded pixels than this. [default: WINCLIP_MAX_PIXELS or 50000000]")
@click.option("--force", is_flag=True, help="Folder mode: replace an existing OUT/events.jsonl.")
@click.option("--no-cache", is_flag=True,
              help="Neither use nor write the optimised-graph cache (in $XDG_CACHE_HOME/winclip-edge).")
@click.option("--roi", "rois", multiple=True, metavar="X,Y,W,H",
              help="Live: crop before scoring, in the source's pixels. The Nth --roi crops the Nth --source; "
                   "'full' leaves a source uncropped; sources past the last --roi are not cropped.")
@click.option("--every", type=Whole(1, 1_000_000), default=1,
              help="Live: score every Nth frame of each source (the others are never decoded).")
@click.option("--max-frames", type=Whole(1, 10**12), default=None,
              help="Live: stop after this many frames, all sources together. [default: no limit]")
@click.option("--duration", type=Finite(0.0, 1e9, min_open=True), default=None,
              help="Live: stop after this many seconds of scoring. [default: no limit]")
@click.option("--wait-for-source", is_flag=True,
              help="Live: keep trying a source that cannot be opened at start (default: a few tries, then exit).")
@click.option("--stall-timeout", type=Finite(0.1, 86400.0), default=defaults.STALL_TIMEOUT_S,
              help="Live: seconds without a frame after which a source counts as lost and is reopened "
                   "(raise it for cameras slower than one frame in that time).")
@click.option("--overlays", type=click.Choice(defaults.OVERLAY_CHOICES), default=None,
              help="Live: save OUT/overlays/<source>/<day>/<time>-<frame>.jpg for anomalous frames, all, or none. "
                   "[default: anomalous with --out, else none]")
@click.option("--keep-days", type=Finite(0.001, 36500.0), default=None,
              help="Live: delete saved overlays older than this many days (oldest first, checked as the run goes). "
                   "[default: keep]")
@click.option("--keep-gb", type=Finite(0.001, 1e6), default=None,
              help="Live: keep the saved overlays under this many GB, deleting the oldest. [default: no limit]")
@click.option("--flush-timeout", type=Finite(0.0, 600.0), default=defaults.SINK_CLOSE_TIMEOUT_S,
              help="Live: at the end of a run, seconds each sink may take to deliver the events it still holds "
                   "(a broker or webhook that is down is retried meanwhile); what is left is counted in the summary.")
@click.option("--rtsp-transport", type=click.Choice(("tcp", "udp")), default=None,
              help="Live: RTSP over TCP or UDP for every rtsp:// source, added to any OPENCV_FFMPEG_CAPTURE_OPTIONS "
                   "you set. [default: OpenCV's choice: TCP when that variable is unset]")
@_sink_options
@click.option("--serve", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Live: serve a live page, /status.json and /metrics on this port (0: any free port).")
@click.option("--host", default=defaults.SERVE_HOST,
              help="Live: the address --serve binds to (0.0.0.0: every interface).")
@click.option("--operator-token-file", type=click.Path(path_type=Path), default=None,
              help=f"Live, with --serve: a file whose first line is the operator token that lets the page write "
                   f"(teach good parts, undo). Or set {defaults.OPERATOR_TOKEN_ENV}; never on the command line. "
                   "Without either the page is read-only.")
@click.pass_context
def main(ctx, bundle, sources, out, object_name, profile, normal_dir, shots, save_maps, save_overlays, threshold,
         pixel_threshold, provider, backend, remeasure, engine_address, precision, threads, inference_precision, batch_size, temperature, max_pixels,
         force, no_cache, rois, every, max_frames, duration, wait_for_source, stall_timeout, overlays, keep_days,
         keep_gb, flush_timeout, rtsp_transport, serve, host, operator_token_file, **sink_values):
    """Score frames from --source with the WinCLIP bundle BUNDLE.

    \b
    Folder mode (one --source, a folder or glob of images): one JSON line per
    image in OUT/events.jsonl (source, image_score, anomalous, per-stage
    latency in ms, or an error for an unusable image), written as
    OUT/events.jsonl.partial and renamed when the run completes. Exits
    non-zero when no image could be scored.

    \b
    Live mode (cameras, video files, streams, pipelines): one JSON line per
    scored frame (source, frame, capture time, age, score, verdict,
    threshold, regions, latency per stage) and one per source event (lost,
    recovered, ended), to OUT/events.jsonl and/or stdout, MQTT, a webhook;
    overlays of anomalous frames; a live page with --serve. Runs until
    SIGINT/SIGTERM, --max-frames, --duration or the end of every video,
    then prints a summary and exits 0.

    With --normal (or a --profile) it runs WinCLIP+ (few-shot), else
    zero-shot WinCLIP.
    """
    from winclip.runtime.line.sources import SourceError, parse_sources

    try:
        specs = parse_sources(list(sources), list(rois))
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    images = [s for s in specs if s.kind == "images"]
    live = not (len(specs) == 1 and images)
    if live and images:
        raise click.UsageError(f"--source {images[0].text}: a folder or glob of images is scored on its own "
                               "(batch mode); it cannot be mixed with other sources")
    live_only = (*LIVE_BASE, *sink_values)
    misplaced = [n for n in (FOLDER_ONLY if live else live_only) if _given(ctx, n)]
    if misplaced:
        what = ("a folder of images (live runs write overlays with --overlays and batch one frame per source)"
                if live else "live sources (cameras, videos, streams); a folder is scored once, in full")
        raise click.UsageError(f"{_flag(misplaced[0])} applies to {what}")
    if engine_address is not None:
        local = [n for n in ("backend", "provider", "threads", "inference_precision", "no_cache") if _given(ctx, n)]
        if local:
            raise click.UsageError(f"{_flag(local[0])} applies to an engine run here, not to --engine {engine_address}")
    if profile is not None and normal_dir is not None:
        raise click.UsageError("--profile brings its own few-shot memory; leave out --normal")
    if live:
        plan = _plan_live(ctx, out, overlays, serve, sink_values)
        plan.update(keep_days=keep_days, keep_gb=keep_gb, token=_operator_token(ctx, serve, operator_token_file))
        if rtsp_transport is not None:
            from winclip.runtime.line.sources.stream import set_rtsp_transport

            set_rtsp_transport(rtsp_transport)
    elif out is None:
        raise click.UsageError("--out is required for a folder of images")

    if engine_address is None:  # a served engine runs elsewhere: this box needs no local library
        from winclip.runtime.backends import backend_class

        backend_class(backend)  # the chosen backend's library, named with its extra when missing, before other work
    import os

    if max_pixels is not None:
        os.environ["WINCLIP_MAX_PIXELS"] = str(max_pixels)
    setup_logging()
    frames = None if live else _image_files(specs[0])
    options = engine_choice(provider, precision, threads, remeasure, inference_precision, cache=not no_cache,
                            endpoint=engine_address, wait=live and wait_for_source)
    detector = _load_detector(bundle, object_name, backend, options, profile, temperature, threshold,
                              pixel_threshold, normal_dir, shots)
    with _output_lock(out):
        if live:
            plan["profile"], plan["keep_thresholds"] = profile, (threshold is not None, pixel_threshold is not None)
            _run_live(detector, specs, out, plan, every=every, max_frames=max_frames, duration=duration,
                      wait_for_source=wait_for_source, stall_timeout=stall_timeout, host=host,
                      flush_timeout=flush_timeout)
        else:
            _run_folder(detector, frames, out, save_maps, save_overlays, batch_size, force)


@contextlib.contextmanager
def _output_lock(out):
    """One run at a time per --out: a second one is refused in one line that names the first."""
    if out is None:
        yield
        return
    from winclip.runtime.locks import writer_lock

    with one_line_errors(f"cannot write to {out}"):
        out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out / LOCK_NAME, f"the output folder {out}"):  # a refusal: one line, as every error
        yield


def _load_detector(bundle, object_name, backend, options, profile, temperature, threshold, pixel_threshold, normal_dir,
                   shots):
    from winclip.runtime.detector import Detector
    from winclip.runtime.images import read_image_folder

    with one_line_errors():
        try:
            detector = Detector.from_bundle(bundle, object=object_name, profile=profile, options=options,
                                            backend=backend, temperature=temperature, threshold=threshold,
                                            pixel_threshold=pixel_threshold)
            if normal_dir is not None:
                normals = read_image_folder(normal_dir, shots)
                detector.build_memory(normals)
                log.info("WinCLIP+ memory from %d normal images", len(normals))
        except ValueError as exc:
            raise click.ClickException(first_line(exc)) from None
    log.info("%s: %s", bundle, detector.describe())
    return detector


# --- folder mode
def _image_files(spec):
    import glob

    from winclip.runtime.images import ImageReadError
    from winclip.runtime.line.frames import FolderSource, GlobSource

    try:
        if Path(spec.text).is_dir():
            frames = FolderSource(Path(spec.text))
        else:
            frames = GlobSource(glob.escape(spec.text) if Path(spec.text).is_file() else spec.text)
    except ImageReadError as exc:
        raise click.ClickException(str(exc)) from None
    if not frames.paths and not frames.problems:
        raise click.ClickException(f"no images found in {spec.text}")
    return frames


def _run_folder(detector, frames, out, save_maps, save_overlays, batch_size, force):
    from winclip.runtime.line.events import ArtifactWriter, EventLog
    from winclip.runtime.line.frames import batched
    from winclip.runtime.line.inspection import Inspection

    try:
        out.mkdir(parents=True, exist_ok=True)
        events = EventLog(out / "events.jsonl", force=force)
        artifacts = ArtifactWriter(out, save_maps, save_overlays) if (save_maps or save_overlays) else None
    except (OSError, FileExistsError) as exc:
        raise click.ClickException(f"cannot write to {out}: {first_line(exc)}") from None
    if events.kept_aside is not None:
        log.warning("an interrupted run's events were kept as %s", events.kept_aside)

    warned = []

    def artifact_failed(exc: OSError) -> None:  # a full disk: warn once, keep scoring
        if not warned:
            log.warning("saving maps/overlays failed (%s); scoring goes on", first_line(exc))
        warned.append(exc)

    inspection = Inspection(detector, [events], artifacts, on_artifact_error=artifact_failed)
    from winclip.runtime.command import progress_bar

    stopper = Stopper(lambda name: None, lambda name: f"the events so far are whole lines in {events.partial}")
    done = 0
    try:
        with stopper, progress_bar(len(frames), "scoring") as bar:
            for batch in batched(frames, batch_size):
                if stopper.signalled:
                    break
                inspection.run_batch(batch)
                done += len(batch)
                bar.update(len(batch))
    except OSError as exc:  # the event log itself failed: stop, keep what was written
        events.close(complete=False)
        raise click.ClickException(f"{first_line(exc)}; events so far are in {events.partial}") from None
    events.close(complete=True)
    counts = inspection.counts
    if stopper.signalled:
        raise click.ClickException(f"stopped by {stopper.signalled} after {done} of {len(frames)} images: "
                                   f"{counts.summary()}; events: {events.path}")
    click.echo(f"{counts.summary()}; events: {events.path}", err=True)
    if counts.scored == 0:
        raise click.ClickException(f"no image could be scored ({counts.errors} errors); see {events.path}")


# --- live mode
def _plan_live(ctx, out, overlays, serve, sink_values: dict) -> dict:
    """Check the live options against each other before anything slow starts; what to open."""
    if out is None and serve is None and not any(sink_values.get(kind.primary) for kind in SINKS.values()):
        flags = ", ".join(_flag(kind.primary) for kind in SINKS.values())
        raise click.UsageError(f"a live run needs somewhere to put its results: --out, {flags} or --serve")
    if overlays not in (None, "none") and out is None:
        raise click.UsageError(f"--overlays {overlays} saves into OUT/overlays: give --out")
    for name in ("keep_days", "keep_gb"):
        if _given(ctx, name) and (out is None or overlays == "none"):
            raise click.UsageError(f"{_flag(name)} prunes the overlays saved in OUT/overlays: give --out")
    for name, needs in [(n, k.requires[n]) for k in SINKS.values() for n in k.requires]:
        if _given(ctx, name) and sink_values.get(needs) is None:
            raise click.UsageError(f"{_flag(name)} needs {_flag(needs)}")
    if _given(ctx, "host") and serve is None:
        raise click.UsageError("--host needs --serve PORT")
    sinks = {name: kind.plan(sink_values, out) for name, kind in SINKS.items()}
    sinks = {name: plan for name, plan in sinks.items() if plan is not None}
    return {"sinks": sinks, "overlays": overlays or ("anomalous" if out is not None else "none"), "serve": serve}


def _operator_token(ctx, serve, token_file) -> str | None:
    """The page's operator token (from --operator-token-file or the environment), checked before anything slow."""
    from winclip.runtime.line.access import load_token

    if serve is None:
        if _given(ctx, "operator_token_file"):
            raise click.UsageError("--operator-token-file needs --serve PORT")
        return None
    return load_token(token_file)  # a TokenError ends the command in one line (Command)


def _open_desk(detector, status, sinks, out, plan, opened: list, server=None):
    """The operator desk (history, teaching, drift), attached to the live page when there is one."""
    from winclip.runtime.line.operator import OperatorDesk

    desk = OperatorDesk(detector, status, sinks, profile_path=plan["profile"], token=plan["token"],
                        history=plan["serve"] is not None,
                        overlay_root=out / defaults.OVERLAY_FOLDER if plan["overlays"] != "none" else None,
                        keep_threshold=plan["keep_thresholds"][0], keep_pixel_threshold=plan["keep_thresholds"][1])
    opened.append(desk)
    if server is not None:
        desk.open_review(out)  # the review desk: episodes, reviews and labels, kept in OUT/review.json
        server.desk = desk
    if plan["token"] is not None and desk.teach_refusal is not None:
        log.warning("the operator token unlocks undo and teaching, but %s", desk.teach_refusal)
    return desk


def _open_sinks(plan, status, host, opened: list):
    """Every sink the plan names, each guarded; `opened` collects what must be closed, even on failure."""
    from winclip.runtime.errors import MissingExtra
    from winclip.runtime.line.sinks import GuardedSink

    sinks = []
    for name, sink_plan in plan["sinks"].items():
        try:
            made = SINKS[name].open(sink_plan, status)
        except MissingExtra as exc:  # the message names the extra to install
            raise click.ClickException(first_line(exc)) from None
        except OSError as exc:
            raise click.ClickException(first_line(exc)) from None
        for sink, sink_name in made:
            guarded = GuardedSink(sink, sink_name, status)
            opened.append(guarded)
            sinks.append(guarded)
    if plan["serve"] is not None:
        from winclip.runtime.line.server import LiveServer

        try:
            server = LiveServer(status, host=host, port=plan["serve"])
            server.start()
        except MissingExtra as exc:  # prometheus-client missing
            raise click.ClickException(first_line(exc)) from None
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise click.ClickException(f"--serve: {exc.strerror or first_line(exc)}") from None
        opened.append(server)
        log.info("live page: %s", server.url)
    return sinks


class Stopper:
    """SIGINT/SIGTERM while a run is on: the first asks it to finish the work in flight and close cleanly
    (`first(name)`); a second exits at once, after one line that says what is left (`last_words(name)`).
    Events are written a whole line per system call, so even then every file holds whole JSON lines.
    The handlers stay until the run has closed everything: a second signal during the closing is caught too.
    """

    def __init__(self, first, last_words):
        self.first, self.last_words = first, last_words
        self.signalled: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        import os

        name = signal.Signals(signum).name
        if self.signalled is not None:
            sys.stderr.write(f"\n{name} again: exiting now; {self.last_words(name)}\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signalled = name
        self.first(name)

    def __enter__(self) -> "Stopper":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _close_all(opened: list, timeout: float) -> None:
    """Close sinks and the server, newest first, each within `timeout`; a failure to close is a warning."""
    for thing in reversed(opened):
        try:
            thing.close(timeout)
        except Exception as exc:  # closing must reach every sink
            log.warning("closing %s failed: %s", type(thing).__name__, first_line(exc))


def _run_live(detector, specs, out, plan, *, every, max_frames, duration, wait_for_source, stall_timeout, host,
              flush_timeout):
    import time

    from winclip.runtime.line.events import LiveOverlayWriter
    from winclip.runtime.line.inspection import Inspection
    from winclip.runtime.line.loop import EngineFailed, LiveLoop, LiveOutputs, StatusLine
    from winclip.runtime.line.server import LiveServer
    from winclip.runtime.line.sinks import sink_report
    from winclip.runtime.line.sources import SourceError
    from winclip.runtime.line.status import LiveStatus

    status = LiveStatus([s.name for s in specs])
    status_line = StatusLine(status)
    setup_logging(before_emit=status_line.clear)
    opened: list = []
    try:
        sinks = _open_sinks(plan, status, host, opened)
        overlays = None
        if plan["overlays"] != "none":
            try:
                overlays = LiveOverlayWriter(out / defaults.OVERLAY_FOLDER, keep_days=plan["keep_days"],
                                             keep_gb=plan["keep_gb"])
            except OSError as exc:
                raise click.ClickException(f"cannot write overlays to {out / 'overlays'}: {first_line(exc)}") from None
        server = next((thing for thing in opened if isinstance(thing, LiveServer)), None)
        desk = _open_desk(detector, status, sinks, out, plan, opened, server)
    except BaseException:
        _close_all(opened, 0.0)
        raise
    outputs = LiveOutputs(status, overlays, plan["overlays"], preview=plan["serve"] is not None)
    inspection = Inspection(detector, sinks, on_event=desk.observe(outputs), before_batch=desk.between_batches)
    loop = LiveLoop(inspection, specs, status, every=every, max_frames=max_frames, duration_s=duration,
                    wait_for_source=wait_for_source, reader_options={"stall_s": stall_timeout},
                    status_line=status_line)
    started = {"event": "run_started", "time": round(time.time(), 3), "sources": [s.name for s in specs],
               "engine": detector.describe(), "threshold": detector.threshold,
               "pixel_threshold": detector.pixel_threshold,
               **({"profile": str(plan["profile"]), "profile_version": desk.version} if plan["profile"] else {})}
    for sink in sinks:
        sink.write(started)

    def stop(name: str) -> None:
        loop.stop_reason = name
        loop.stop.set()

    failure, reason = None, None
    with Stopper(stop, lambda name: "the events written so far are whole lines; what the sinks still held is lost"):
        try:
            reason = loop.run()
        except (SourceError, EngineFailed) as exc:
            failure = str(exc)
        finally:
            loop.close()
        snap = status.snapshot()
        stopped = {"event": "run_stopped", "time": round(time.time(), 3), "reason": failure or reason,
                   **{k: snap[k] for k in ("scored", "errors", "anomalous", "dropped")},
                   "sinks": {sink.name: sink.stats() for sink in sinks}}
        for sink in sinks:
            sink.write(stopped)
        _close_all(opened, flush_timeout)
    if failure is not None:
        raise click.ClickException(failure)
    report = sink_report(sinks)
    log.info("%s", loop.summary(reason) + (f"; sinks: {report}" if report else ""))
    if snap["scored"] == 0 and reason == "every source ended":
        raise click.ClickException(f"no frame could be scored ({snap['errors']} errors)")


if __name__ == "__main__":
    sys.exit(main())
