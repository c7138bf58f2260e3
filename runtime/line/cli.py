"""`winclip-inspect`: score frames from a source with an engine bundle.

One --source that is a folder or glob of images: batch mode, every image once.
Anything else (camera indexes, video files, stream URLs, GStreamer pipelines,
one --source each): the live loop (loop.py) until stopped. Where live events go
is the sink table's business (sinks/): each sink brings its own options.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from winclip.runtime.command import CONTEXT, Command, Finite, Whole, engine_options
from winclip.runtime.defaults import check_threshold
from winclip.runtime.errors import first_line
from winclip.runtime.line import defaults
from winclip.runtime.line.options import LOCK_NAME  # noqa: F401  (tests and scripts import it from here)
from winclip.runtime.line.options import (check_engine_options, engine_plan, flag, given, load_engine, output_lock,
                                          output_plan, part_plan, run_limits, sink_options, sink_values_of)
from winclip.runtime.line.plan import CameraPlan, LivePlan

log = logging.getLogger("winclip.inspect")  # not __name__: run as a script, that is "__main__"

LIVE_BASE = ("rois", "every", "max_frames", "duration", "wait_for_source", "stall_timeout", "overlays", "keep_days",
             "keep_gb", "flush_timeout", "rtsp_transport", "serve", "host", "operator_token_file")
FOLDER_ONLY = ("save_maps", "save_overlays", "batch_size", "force")


def _threshold(ctx, param, value):
    try:
        return check_threshold(value, param.opts[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--source", "sources", multiple=True, metavar="SOURCE",
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
@sink_options
@click.option("--serve", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Live: serve a live page, /status.json and /metrics on this port (0: any free port).")
@click.option("--host", default=defaults.SERVE_HOST,
              help="Live: the address --serve binds to (0.0.0.0: every interface).")
@click.option("--operator-token-file", type=click.Path(path_type=Path), default=None,
              help=f"Live, with --serve: a file whose first line is the operator token that lets the page write "
                   f"(teach good parts, undo). Or set {defaults.OPERATOR_TOKEN_ENV}; never on the command line. "
                   "Without either the page is read-only.")
@click.option("--station", type=click.Path(path_type=Path), default=None, metavar="STATION.TOML",
              help="Run a station: several cameras, each with its own object, profile, thresholds, ROI, rate and "
                   "sinks, on one engine, as the file says (docs/inspect.md, 'A station'). BUNDLE and the other "
                   "options are then the file's. SIGHUP re-reads it.")
@click.option("--check", is_flag=True,
              help="With --station: check the file and print the plan (cameras, objects, profiles, engine, sinks) "
                   "without opening any source; exit 0 when it can run, 1 with one line per problem.")
@click.pass_context
def main(ctx, bundle, **values):
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
    if values["station"] is not None:
        from winclip.runtime.line.station import run_station

        return run_station(ctx, bundle, values)
    if values["check"]:
        raise click.UsageError("--check checks a station file: give --station STATION.TOML")
    if bundle is None:
        raise click.UsageError("Missing argument 'BUNDLE' (or run a station: --station STATION.TOML)")
    if not values["sources"]:
        raise click.UsageError("Missing option '--source'")
    from winclip.runtime.line.sources import SourceError, parse_sources

    try:
        specs = parse_sources(list(values["sources"]), list(values["rois"]))
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    images = [s for s in specs if s.kind == "images"]
    live = not (len(specs) == 1 and images)
    if live and images:
        raise click.UsageError(f"--source {images[0].text}: a folder or glob of images is scored on its own "
                               "(batch mode); it cannot be mixed with other sources")
    sink_values = sink_values_of(values)
    misplaced = [n for n in (FOLDER_ONLY if live else (*LIVE_BASE, *sink_values)) if given(ctx, n)]
    if misplaced:
        what = ("a folder of images (live runs write overlays with --overlays and batch one frame per source)"
                if live else "live sources (cameras, videos, streams); a folder is scored once, in full")
        raise click.UsageError(f"{flag(misplaced[0])} applies to {what}")
    check_engine_options(ctx, values)
    part = part_plan(values)
    if live:
        plan = LivePlan(tuple(CameraPlan(spec, part) for spec in specs), run_limits(values),
                        output_plan(ctx, values, sink_values))
        if values["rtsp_transport"] is not None:
            from winclip.runtime.line.sources.stream import set_rtsp_transport

            set_rtsp_transport(values["rtsp_transport"])
    elif values["out"] is None:
        raise click.UsageError("--out is required for a folder of images")
    options = engine_plan(values, wait=live and values["wait_for_source"])  # the backend's library, first
    frames = None if live else _image_files(specs[0])
    engine = load_engine(bundle, part, options, values["temperature"], build_memory=not live)
    with output_lock(values["out"]):
        if live:
            from winclip.runtime.line.app import run_live

            run_live(engine, plan)
        else:
            _run_folder(engine, frames, values)


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


def _run_folder(detector, frames, values: dict):
    out, save_maps, save_overlays = values["out"], values["save_maps"], values["save_overlays"]
    from winclip.runtime.line.events import ArtifactWriter, EventLog
    from winclip.runtime.line.frames import batched
    from winclip.runtime.line.inspection import Inspection

    try:
        out.mkdir(parents=True, exist_ok=True)
        events = EventLog(out / "events.jsonl", force=values["force"])
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

    from winclip.runtime.line.app import Stopper

    stopper = Stopper(lambda name: None, lambda name: f"the events so far are whole lines in {events.partial}")
    done = 0
    try:
        with stopper, progress_bar(len(frames), "scoring") as bar:
            for batch in batched(frames, values["batch_size"]):
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


if __name__ == "__main__":
    sys.exit(main())
