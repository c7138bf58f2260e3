"""`winclip-inspect`: score frames from a source with an engine bundle."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from winclip.runtime.defaults import PRECISIONS, PROVIDERS, check_threshold
from winclip.runtime.errors import first_line


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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="Folder of images to score (searched recursively).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder for events.jsonl, maps and overlays.")
@click.option("--object", "object_name", default=None,
              help="Object whose text embeddings to use. [default: the bundle's only object]")
@click.option("--profile", type=click.Path(path_type=Path), default=None,
              help="Line profile from winclip-calibrate: its few-shot memory and thresholds (--threshold overrides).")
@click.option("--normal", "--reference", "normal_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of normal images: builds the WinCLIP+ few-shot memory.")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Normal images to use (the first K, sorted). [default: all]")
@click.option("--save-maps", is_flag=True, help="Write OUT/maps/<name>.npy, float32 at the image's resolution.")
@click.option("--save-overlays", is_flag=True, help="Write OUT/overlays/<name>.png heat maps over the image.")
@click.option("--threshold", type=float, default=None, callback=_threshold,
              help="Image score in [0, 1] at or above which a part is anomalous.")
@click.option("--pixel-threshold", type=float, default=None, callback=_threshold,
              help="Map value in [0, 1] at or above which pixels form defect regions (listed for anomalous frames).")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", help="ONNX Runtime provider.")
@click.option("--precision", type=click.Choice(("auto", *PRECISIONS)), default="auto",
              help="Engine to run: auto = fp16 on CUDA, a guarded int8 on CPU, else fp32.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads. [default: all cores]")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, help="Frames per session call.")
@click.option("--temperature", type=float, default=None, help="Override the manifest's softmax temperature.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more decoded pixels than this. [default: WINCLIP_MAX_PIXELS or 50000000]")
@click.option("--force", is_flag=True, help="Replace an existing OUT/events.jsonl.")
@click.option("--no-cache", is_flag=True,
              help="Neither use nor write the optimised-graph cache (in $XDG_CACHE_HOME/winclip-edge).")
def main(bundle, source, out, object_name, profile, normal_dir, shots, save_maps, save_overlays, threshold,
         pixel_threshold, provider, precision, threads, batch_size, temperature, max_pixels, force, no_cache):
    """Score every image under --source with the WinCLIP bundle BUNDLE.

    Writes one JSON line per image to OUT/events.jsonl (source, image_score,
    anomalous, per-stage latency in ms, or an error for an unusable image).
    Lines go to OUT/events.jsonl.partial as they come and the file is renamed
    when the run completes. With --normal it runs WinCLIP+ (few-shot), else
    zero-shot WinCLIP. Exits non-zero when no image could be scored.
    """
    require_onnxruntime()
    import os

    from winclip.runtime.detector import Detector
    from winclip.runtime.errors import BundleError
    from winclip.runtime.events import ArtifactWriter, EventLog
    from winclip.runtime.images import ImageReadError, read_image_folder
    from winclip.runtime.inspection import Inspection
    from winclip.runtime.sources import FolderSource, batched

    if max_pixels is not None:
        os.environ["WINCLIP_MAX_PIXELS"] = str(max_pixels)
    try:
        frames = FolderSource(source)
    except ImageReadError as exc:
        raise click.ClickException(str(exc)) from None
    if not frames.paths and not frames.problems:
        raise click.ClickException(f"no images found in {source}")
    if profile is not None and normal_dir is not None:
        raise click.UsageError("--profile brings its own few-shot memory; leave out --normal")
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


if __name__ == "__main__":
    sys.exit(main())
