"""`winclip-inspect`: score frames from a source with an engine bundle.

One --source that is a folder or glob of images: batch mode, every image once.
Anything else (camera indexes, video files, stream URLs, GStreamer pipelines,
one --source each): the live loop (runtime/live_loop.py) until stopped.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from winclip.runtime.defaults import OVERLAY_CHOICES, PRECISIONS, PROVIDERS, check_threshold
from winclip.runtime.errors import first_line

LIVE_ONLY = ("roi", "every", "max_frames", "duration", "wait_for_source", "stall_timeout", "events", "rotate_mb",
             "rotate_keep", "overlays", "mqtt", "mqtt_topic", "webhook", "serve", "host")
FOLDER_ONLY = ("save_maps", "save_overlays", "batch_size", "force")


def _threshold(ctx, param, value):
    try:
        return check_threshold(value, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def require_onnxruntime() -> None:
    """Exit with the install command when no ONNX Runtime is installed (after --help was handled)."""
    try:
        import onnxruntime  # noqa: F401  (from the [cpu] or [gpu] extra, never both)
    except ImportError:
        raise click.ClickException("onnxruntime is not installed: pip install 'winclip-edge[cpu]' "
                                   "(or [gpu] on a CUDA box)") from None


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
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
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Normal images to use (the first K, sorted). [default: all]")
@click.option("--save-maps", is_flag=True,
              help="Folder mode: write OUT/maps/<name>.npy, float32 at the image's resolution.")
@click.option("--save-overlays", is_flag=True,
              help="Folder mode: write OUT/overlays/<name>.png heat maps over the image.")
@click.option("--threshold", type=float, default=None, callback=_threshold,
              help="Image score in [0, 1] at or above which a part is anomalous.")
@click.option("--pixel-threshold", type=float, default=None, callback=_threshold,
              help="Map value in [0, 1] at or above which pixels form defect regions (listed for anomalous frames).")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help="ONNX Runtime provider.")
@click.option("--precision", type=click.Choice(("auto", *PRECISIONS)), default="auto",
              help="Engine to run: auto = fp16 on CUDA, a guarded int8 on CPU, else fp32.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads. [default: all cores]")
@click.option("--batch-size", type=click.IntRange(min=1), default=1,
              help="Folder mode: frames per session call (live runs batch one frame per source).")
@click.option("--temperature", type=float, default=None, help="Override the manifest's softmax temperature.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more decoded pixels than this. [default: WINCLIP_MAX_PIXELS or 50000000]")
@click.option("--force", is_flag=True, help="Folder mode: replace an existing OUT/events.jsonl.")
@click.option("--no-cache", is_flag=True,
              help="Neither use nor write the optimised-graph cache (in $XDG_CACHE_HOME/winclip-edge).")
@click.option("--roi", "rois", multiple=True, metavar="X,Y,W,H",
              help="Live: crop before scoring, in the source's pixels. The Nth --roi crops the Nth --source; "
                   "'full' leaves a source uncropped; sources past the last --roi are not cropped.")
@click.option("--every", type=click.IntRange(min=1), default=1,
              help="Live: score every Nth frame of each source (the others are never decoded).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Live: stop after this many frames, all sources together. [default: no limit]")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Live: stop after this many seconds of scoring. [default: no limit]")
@click.option("--wait-for-source", is_flag=True,
              help="Live: keep trying a source that cannot be opened at start (default: a few tries, then exit).")
@click.option("--stall-timeout", type=click.FloatRange(min=0.1), default=5.0,
              help="Live: seconds without a frame after which a source counts as lost and is reopened "
                   "(raise it for cameras slower than one frame in that time).")
@click.option("--events", "events", multiple=True, metavar="PATH|-",
              help="Live: where event lines go: a file (appended, rotated by size) or '-' for stdout; repeat for "
                   "both. [default: OUT/events.jsonl]")
@click.option("--rotate-mb", type=click.FloatRange(min=0.001), default=100.0,
              help="Live: an event file that would pass this size becomes FILE.1 (older ones FILE.2, ...).")
@click.option("--rotate-keep", type=click.IntRange(min=1), default=5, help="Live: rotated event files kept.")
@click.option("--overlays", type=click.Choice(OVERLAY_CHOICES), default=None,
              help="Live: save OUT/overlays/<source>/<day>/<time>-<frame>.jpg for anomalous frames, all, or none. "
                   "[default: anomalous with --out, else none]")
@click.option("--mqtt", default=None, metavar="HOST[:PORT]",
              help="Live: publish every event to this MQTT broker (QoS 1, reconnecting; needs winclip-edge[live]).")
@click.option("--mqtt-topic", default="winclip/events", help="Live: the MQTT topic for --mqtt.")
@click.option("--webhook", default=None, metavar="URL",
              help="Live: POST each anomalous event as JSON to this http(s) URL (short timeout, off the "
                   "scoring thread).")
@click.option("--serve", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Live: serve a live page, /status.json and /metrics on this port (0: any free port).")
@click.option("--host", default="127.0.0.1", help="Live: the address --serve binds to (0.0.0.0: every interface).")
@click.pass_context
def main(ctx, bundle, sources, out, object_name, profile, normal_dir, shots, save_maps, save_overlays, threshold,
         pixel_threshold, provider, precision, threads, batch_size, temperature, max_pixels, force, no_cache,
         rois, every, max_frames, duration, wait_for_source, stall_timeout, events, rotate_mb, rotate_keep, overlays,
         mqtt, mqtt_topic, webhook, serve, host):
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
    from winclip.runtime.live_sources import SourceError, parse_sources

    try:
        specs = parse_sources(list(sources), list(rois))
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    images = [s for s in specs if s.kind == "images"]
    live = not (len(specs) == 1 and images)
    if live and images:
        raise click.UsageError(f"--source {images[0].text}: a folder or glob of images is scored on its own "
                               "(batch mode); it cannot be mixed with other sources")
    misplaced = [n for n in (FOLDER_ONLY if live else LIVE_ONLY) if _given(ctx, n)]
    if misplaced:
        what = ("a folder of images (live runs write overlays with --overlays and batch one frame per source)"
                if live else "live sources (cameras, videos, streams); a folder is scored once, in full")
        raise click.UsageError(f"{_flag(misplaced[0])} applies to {what}")
    if profile is not None and normal_dir is not None:
        raise click.UsageError("--profile brings its own few-shot memory; leave out --normal")
    if live:
        plan = _plan_live(ctx, out, events, overlays, mqtt, webhook, serve)
    elif out is None:
        raise click.UsageError("--out is required for a folder of images")

    require_onnxruntime()
    import os

    if max_pixels is not None:
        os.environ["WINCLIP_MAX_PIXELS"] = str(max_pixels)
    frames = None if live else _image_files(specs[0])
    detector = _load_detector(bundle, object_name, provider, precision, profile, threads, temperature, threshold,
                              pixel_threshold, no_cache, normal_dir, shots)
    if live:
        _run_live(detector, specs, out, plan, every=every, max_frames=max_frames, duration=duration,
                  wait_for_source=wait_for_source, stall_timeout=stall_timeout, rotate_mb=rotate_mb,
                  rotate_keep=rotate_keep, mqtt_topic=mqtt_topic, host=host)
    else:
        _run_folder(detector, frames, out, save_maps, save_overlays, batch_size, force)


def _load_detector(bundle, object_name, provider, precision, profile, threads, temperature, threshold,
                   pixel_threshold, no_cache, normal_dir, shots):
    from winclip.runtime.detector import Detector
    from winclip.runtime.errors import BundleError
    from winclip.runtime.images import ImageReadError, read_image_folder

    try:
        detector = Detector.from_bundle(bundle, object=object_name, provider=provider, precision=precision,
                                        profile=profile, threads=threads, temperature=temperature,
                                        threshold=threshold, pixel_threshold=pixel_threshold, cache=not no_cache)
        if normal_dir is not None:
            normals = read_image_folder(normal_dir, shots)
            detector.build_memory(normals)
            click.echo(f"WinCLIP+ memory from {len(normals)} normal images", err=True)
    except (BundleError, ImageReadError, ValueError) as exc:
        raise click.ClickException(first_line(exc)) from None
    click.echo(f"{bundle}: {detector.describe()}", err=True)
    return detector


# --- folder mode: today's batch run, unchanged
def _image_files(spec):
    import glob

    from winclip.runtime.images import ImageReadError
    from winclip.runtime.sources import FolderSource, GlobSource

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
    from winclip.runtime.events import ArtifactWriter, EventLog
    from winclip.runtime.inspection import Inspection
    from winclip.runtime.sources import batched

    try:
        out.mkdir(parents=True, exist_ok=True)
        log = EventLog(out / "events.jsonl", force=force)
        artifacts = ArtifactWriter(out, save_maps, save_overlays) if (save_maps or save_overlays) else None
    except (OSError, FileExistsError) as exc:
        raise click.ClickException(f"cannot write to {out}: {first_line(exc)}") from None
    if log.kept_aside is not None:
        click.echo(f"warning: an interrupted run's events were kept as {log.kept_aside}", err=True)

    warned = []

    def artifact_failed(exc: OSError) -> None:  # a full disk: warn once, keep scoring
        if not warned:
            click.echo(f"warning: saving maps/overlays failed ({first_line(exc)}); scoring goes on", err=True)
        warned.append(exc)

    inspection = Inspection(detector, [log], artifacts, on_artifact_error=artifact_failed)
    from tqdm import tqdm

    try:
        with tqdm(total=len(frames), unit="img", file=sys.stderr, disable=None) as bar:
            for batch in batched(frames, batch_size):
                inspection.run_batch(batch)
                bar.update(len(batch))
    except OSError as exc:  # the event log itself failed: stop, keep what was written
        log.close(complete=False)
        raise click.ClickException(f"{first_line(exc)}; events so far are in {log.partial}") from None
    log.close(complete=True)
    counts = inspection.counts
    click.echo(f"{counts.summary()}; events: {log.path}", err=True)
    if counts.scored == 0:
        raise click.ClickException(f"no image could be scored ({counts.errors} errors); see {log.path}")


# --- live mode
def _plan_live(ctx, out, events, overlays, mqtt, webhook, serve) -> dict:
    """Check the live options against each other before anything slow starts; what to open."""
    if not events and out is None and mqtt is None and webhook is None and serve is None:
        raise click.UsageError("a live run needs somewhere to put its results: --out, --events, --mqtt, "
                               "--webhook or --serve")
    if overlays not in (None, "none") and out is None:
        raise click.UsageError(f"--overlays {overlays} saves into OUT/overlays: give --out")
    if len(set(events)) != len(events):
        raise click.UsageError("--events names the same place twice")
    if _given(ctx, "mqtt_topic") and mqtt is None:
        raise click.UsageError("--mqtt-topic needs --mqtt HOST[:PORT]")
    if _given(ctx, "host") and serve is None:
        raise click.UsageError("--host needs --serve PORT")
    from winclip.runtime.sinks import check_webhook_url, parse_host_port  # stdlib only: paho is imported later

    mqtt_address = None
    if mqtt is not None:
        try:
            mqtt_address = parse_host_port(mqtt, 1883)
        except ValueError as exc:
            raise click.BadParameter(first_line(exc), param_hint="'--mqtt'") from None
    if webhook is not None:
        try:
            check_webhook_url(webhook)
        except ValueError as exc:
            raise click.BadParameter(first_line(exc), param_hint="'--webhook'") from None
    return {"events": list(events) or ([str(out / "events.jsonl")] if out is not None else []),
            "overlays": overlays or ("anomalous" if out is not None else "none"),
            "mqtt": mqtt_address, "webhook": webhook, "serve": serve}


def _open_sinks(plan, out, status, say, rotate_mb, rotate_keep, mqtt_topic, host, opened: list):
    """Every sink the plan names, each guarded; `opened` collects what must be closed, even on failure."""
    from winclip.runtime.events import RotatingEventLog, StreamEvents
    from winclip.runtime.live_loop import GuardedSink
    from winclip.runtime.live_sources import redact_url

    sinks = []
    for target in plan["events"]:
        if target == "-":
            sink, name = StreamEvents(sys.stdout), "stdout"
        else:
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                sink = RotatingEventLog(path, max_bytes=int(rotate_mb * (1 << 20)), keep=rotate_keep)
            except OSError as exc:
                raise click.ClickException(f"cannot write events to {path}: {first_line(exc)}") from None
            name = f"events file {path}"
        opened.append(sink)
        sinks.append(GuardedSink(sink, name, status, say))
    if plan["mqtt"] is not None:
        from winclip.runtime.sinks import MqttSink

        host_name, port = plan["mqtt"]
        try:
            sink = MqttSink(host_name, port, topic=mqtt_topic, status=status)
        except RuntimeError as exc:  # paho-mqtt missing: the message names the extra to install
            raise click.ClickException(first_line(exc)) from None
        opened.append(sink)
        sinks.append(GuardedSink(sink, f"MQTT {sink.address}", status, say))
    if plan["webhook"] is not None:
        from winclip.runtime.sinks import WebhookSink

        try:
            sink = WebhookSink(plan["webhook"], status=status)
        except ValueError as exc:
            raise click.BadParameter(first_line(exc), param_hint="'--webhook'") from None
        opened.append(sink)
        sinks.append(GuardedSink(sink, f"webhook {redact_url(plan['webhook'])}", status, say))
    if plan["serve"] is not None:
        from winclip.runtime.live_server import LiveServer

        try:
            server = LiveServer(status, host=host, port=plan["serve"])
            server.start()
        except RuntimeError as exc:  # prometheus-client missing
            raise click.ClickException(first_line(exc)) from None
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise click.ClickException(f"--serve: {exc.strerror or first_line(exc)}") from None
        opened.append(server)
        say(f"live page: {server.url}")
    return sinks


def _stop_on_signals(loop):
    """SIGINT/SIGTERM end the run after the frame in flight; a second one ends the process at once."""
    import os

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if loop.stop.is_set():
            sys.stderr.write(f"\n{name} again: exiting now\n")
            os._exit(128 + signum)
        loop.stop_reason = name
        loop.stop.set()

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _close_all(opened: list, say) -> None:
    """Close sinks and the server, newest first; a failure to close one is a warning, never a crash."""
    for thing in reversed(opened):
        try:
            thing.close()
        except Exception as exc:  # closing must reach every sink
            say(f"warning: closing {type(thing).__name__} failed: {first_line(exc)}")


def _run_live(detector, specs, out, plan, *, every, max_frames, duration, wait_for_source, stall_timeout, rotate_mb,
              rotate_keep, mqtt_topic, host):
    import time

    from winclip.runtime.events import LiveOverlayWriter
    from winclip.runtime.inspection import Inspection
    from winclip.runtime.live_loop import EngineFailed, LiveLoop, LiveOutputs, StatusLine
    from winclip.runtime.live_sources import SourceError
    from winclip.runtime.live_status import LiveStatus

    status = LiveStatus([s.name for s in specs])
    status_line = StatusLine(status)

    def say(message: str) -> None:
        status_line.clear()
        click.echo(message, err=True)

    opened: list = []
    try:
        sinks = _open_sinks(plan, out, status, say, rotate_mb, rotate_keep, mqtt_topic, host, opened)
        overlays = None
        if plan["overlays"] != "none":
            try:
                overlays = LiveOverlayWriter(out / "overlays")
            except OSError as exc:
                raise click.ClickException(f"cannot write overlays to {out / 'overlays'}: {first_line(exc)}") from None
    except BaseException:
        _close_all(opened, say)
        raise
    outputs = LiveOutputs(status, overlays, plan["overlays"], preview=plan["serve"] is not None, say=say)
    inspection = Inspection(detector, sinks, on_event=outputs)
    loop = LiveLoop(inspection, specs, status, every=every, max_frames=max_frames, duration_s=duration,
                    wait_for_source=wait_for_source, reader_options={"stall_s": stall_timeout}, say=say,
                    status_line=status_line)
    started = {"event": "run_started", "time": round(time.time(), 3), "sources": [s.name for s in specs],
               "engine": detector.describe(), "threshold": detector.threshold,
               "pixel_threshold": detector.pixel_threshold}
    for sink in sinks:
        sink.write(started)
    previous = _stop_on_signals(loop)
    failure, reason = None, None
    try:
        reason = loop.run()
    except (SourceError, EngineFailed) as exc:
        failure = str(exc)
    finally:
        loop.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    snap = status.snapshot()
    stopped = {"event": "run_stopped", "time": round(time.time(), 3), "reason": failure or reason,
               **{k: snap[k] for k in ("scored", "errors", "anomalous", "dropped")}}
    for sink in sinks:
        sink.write(stopped)
    _close_all(opened, say)
    if failure is not None:
        raise click.ClickException(failure)
    say(loop.summary(reason) + (f"; events: {', '.join(plan['events'])}" if plan["events"] else ""))
    if snap["scored"] == 0 and reason == "every source ended":
        raise click.ClickException(f"no frame could be scored ({snap['errors']} errors)")


if __name__ == "__main__":
    sys.exit(main())
