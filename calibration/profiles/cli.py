"""`winclip-calibrate`: a line profile (WinCLIP+ memory + thresholds) from normal parts, without re-export."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

import click

from winclip.runtime.command import CONTEXT, Command, Finite, Whole, engine_choice_of, engine_options
from winclip.runtime.defaults import MEMORY_MAX_SHOTS
from winclip.runtime.errors import first_line


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--normal", "normal_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of normal (good) parts: K become the memory, the rest set the thresholds.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Line profile directory to write (with --add-normal: the profile to change).")
@click.option("--add-normal", "add_dir", type=click.Path(path_type=Path), default=None,
              help="Instead of a new profile: a folder of good parts to add to the profile at --out, as its next "
                   "version (features join the memory, thresholds re-derived; the previous version stays loadable).")
@click.option("--who", default=None, help="With --add-normal: who made the change. [default: $USER]")
@click.option("--why", default=None, help="With --add-normal: why (kept with the version).")
@click.option("--object", "object_name", default=None, help="Object name. [default: the bundle's only object]")
@click.option("--shots", type=Whole(1, MEMORY_MAX_SHOTS), default=4, help="Normal images in the WinCLIP+ memory (K).")
@click.option("--seed", type=Whole(0, 2**32 - 1), default=0, help="Seed of the reproducible choice of the K memory images.")
@click.option("--false-alarm-rate", type=Finite(0.0, 1.0, min_open=True, max_open=True), default=0.01,
              help="Target fraction of good parts flagged (image threshold) or shown with a region (pixel threshold).")
@click.option("--labelled", "labelled_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with good/ and one folder per defect kind: adds AUROC and the F1-max threshold.")
@click.option("--threshold-from", type=click.Choice(("false-alarm-rate", "f1-max")), default="false-alarm-rate",
              help="Which image threshold the profile uses (f1-max needs --labelled).")
@engine_options("Engine the profile is made with (and bound to), on whichever backend runs it.")
@click.option("--force", is_flag=True, help="Replace an existing profile at --out.")
@click.pass_context
def main(ctx, bundle, out, **values):
    """Make a line profile for BUNDLE from normal parts only (no defects needed), without re-export.

    The profile holds the WinCLIP+ memory of K normal images (chosen reproducibly)
    and image and pixel thresholds set on the other normal images for the target
    false-alarm rate; `winclip-inspect BUNDLE --profile OUT` uses it as it is.
    Also writes OUT/histogram.png: the normal (and defect) scores and thresholds.

    With --add-normal DIR the profile at --out gets a new version instead: the
    good parts in DIR join its memory and its thresholds are re-derived
    (docs/line-profiles.md).
    """
    if values["add_dir"] is not None:
        given = [name for name in NEW_PROFILE_ONLY if ctx.get_parameter_source(name).name == "COMMANDLINE"]
        if given:
            raise click.UsageError(f"--{given[0].replace('_dir', '').replace('_name', '').replace('_', '-')} makes a "
                                   "new profile; --add-normal changes the one at --out")
        return _add_normal(bundle, out, values["add_dir"], values["who"], values["why"], values["backend"],
                           engine_choice_of(values))
    if values["normal_dir"] is None:
        raise click.UsageError("--normal DIR is needed to make a profile (or --add-normal DIR to change one)")
    if values["who"] is not None or values["why"] is not None:
        raise click.UsageError("--who and --why go with --add-normal")
    _make_profile(bundle, out, values["backend"], engine_choice_of(values), new_profile(values))


@dataclass(frozen=True)
class NewProfile:
    """How winclip-calibrate makes a new profile (not --add-normal): each field is the option of that name."""

    normal_dir: Path  # good parts: K become the memory, the rest set the thresholds
    object_name: str | None  # None: the bundle's only object
    shots: int  # K, normal images in the WinCLIP+ memory
    seed: int  # of the reproducible choice of the K memory images
    false_alarm_rate: float  # target fraction of good parts flagged
    labelled_dir: Path | None  # good/ and one folder per defect kind: AUROC and the F1-max threshold
    threshold_from: str  # "false-alarm-rate" or "f1-max": which image threshold the profile uses
    force: bool  # replace an existing profile at --out


NEW_PROFILE_ONLY = ("normal_dir", "labelled_dir", "threshold_from", "shots", "seed", "false_alarm_rate", "force",
                    "object_name")  # the order --add-normal names the first one given


def new_profile(values: dict) -> NewProfile:
    return NewProfile(**{field.name: values[field.name] for field in fields(NewProfile)})


def _make_profile(bundle: Path, out: Path, backend: str, options, plan: NewProfile) -> None:
    """winclip-calibrate without --add-normal: score the normal (and labelled) parts, write the profile and its
    histogram, and say what the thresholds mean."""
    from winclip.runtime.backends import backend_class
    from winclip.runtime.command import one_line_errors, setup_logging

    backend_class(backend)  # the chosen backend's library, named with its extra when missing
    setup_logging()
    from winclip.calibration.profiles.histogram import histogram_picture
    from winclip.calibration.profiles.setup import calibrate, planned_images
    from winclip.runtime.command import progress_bar
    from winclip.runtime.atomic import write_atomic
    from winclip.runtime.detector import Detector
    from winclip.runtime.images import png_bytes

    if out.exists() and not plan.force:
        raise click.ClickException(f"{out} exists; pass --force to replace it")
    with one_line_errors():
        try:
            detector = Detector.from_bundle(bundle, object=plan.object_name, backend=backend, options=options)
            click.echo(f"{bundle}: {detector.describe()}", err=True)
            with progress_bar(planned_images(plan.normal_dir, plan.labelled_dir), "scoring") as bar:
                result = calibrate(detector, plan.normal_dir, plan.shots, plan.false_alarm_rate, plan.seed,
                                   plan.labelled_dir, plan.threshold_from, progress=bar.update)
            profile = detector.to_profile(result.record)
            root = profile.save(out, force=plan.force, extra=result.write_reference)
            thresholds = {"image": detector.threshold, "pixel": detector.pixel_threshold}
            write_atomic(root / "histogram.png", png_bytes(histogram_picture(_panels(detector, result))))
        except (ValueError, ImportError) as exc:
            raise click.ClickException(first_line(exc)) from None
        except (OSError, FileExistsError) as exc:
            raise click.ClickException(f"cannot write the profile {out}: {first_line(exc)}") from None
    _say_profile(result.record, thresholds, plan.seed)
    click.echo(f"profile written to {root} (histogram: {root / 'histogram.png'})")


def _say_profile(rec: dict, thresholds: dict, seed: int) -> None:
    """The memory, the normal scores, the thresholds with the false alarms they mean, and the labelled figures."""
    stats = rec["normal_scores"]["image"]
    click.echo(f"memory: {len(rec['normal_images']['memory'])} normal images (seed {seed}); "
               f"{stats['count']} held-out normals scored")
    click.echo(f"normal image scores: min {stats['min']:.4f}  median {stats['p50']:.4f}  p95 {stats['p95']:.4f}  "
               f"max {stats['max']:.4f}")
    held = stats["count"]
    expected = (f"{rec['expected_false_alarms_per_1000']:.1f} per 1,000 good parts"
                if rec["false_alarm_rate_resolved"] else
                f"below about {1000 / held:.0f} per 1,000 good parts ({held} held-out normals cannot say more)")
    click.echo(f"image threshold {thresholds['image']:.4f} ({rec['thresholds']['image']['method']}), "
               f"pixel threshold {thresholds['pixel']:.4f}; expected false alarms: {expected}")
    if "labelled" in rec:
        lab = rec["labelled"]
        click.echo(f"labelled: {lab['good']} good, {lab['defect']} defect; image AUROC {lab['image_auroc']:.4f}, "
                   f"F1-max {lab['f1_max']:.4f} at threshold {lab['f1_max_threshold']:.4f}")


def _panels(detector, result) -> list:
    """The calibration picture's panels: image scores with their thresholds, pixel-map maxima with the pixel one."""
    from winclip.calibration.profiles.histogram import Panel

    thresholds = result.record["thresholds"]
    labelled = result.defect_scores is not None
    image_lines = {"image threshold": detector.threshold}
    if "image_f1_max" in thresholds and thresholds["image_f1_max"]["value"] != detector.threshold:
        image_lines["F1-max"] = thresholds["image_f1_max"]["value"]
    parts = "held-out normal parts" + (" and labelled defects" if labelled else "")
    return [Panel(f"{detector.object_name}: image scores of {parts}", "image score", result.normal_scores,
                  result.defect_scores, image_lines),
            Panel(f"{detector.object_name}: the highest pixel-map value of each part", "pixel-map maximum",
                  result.normal_map_max, result.defect_map_max, {"pixel threshold": detector.pixel_threshold})]


def _add_normal(bundle, out, add_dir, who, why, backend, options):
    """winclip-calibrate --add-normal: the next version of the profile at OUT, with DIR's good parts taught."""
    import getpass

    from winclip.calibration.profiles.setup import read_folder
    from winclip.runtime.backends import backend_class
    from winclip.runtime.command import one_line_errors, setup_logging
    from winclip.runtime.detector import Detector
    from winclip.runtime.images import display_path
    from winclip.runtime.profiles.versions import ProfileStore
    from winclip.runtime.profiles.teach import GoodPart, teach

    backend_class(backend)  # the chosen backend's library, named with its extra when missing
    setup_logging()
    with one_line_errors():
        store = ProfileStore(out)
        before = store.load()[0]
        detector = Detector.from_bundle(bundle, profile=before, backend=backend, options=options)
        click.echo(f"{bundle}: {detector.describe()}", err=True)
        images, _ = read_folder(add_dir, "normal images to add")
        if not images:
            raise click.ClickException(f"{add_dir} holds no readable images to add")
        parts = [GoodPart(im.image, display_path(im.path.relative_to(add_dir)),
                          {"file": display_path(im.path.relative_to(add_dir)), "file_sha256": im.sha256})
                 for im in images]
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "winclip-calibrate"
        version = teach(detector, store, parts, who=who or user, why=why or f"added {display_path(add_dir)}",
                        action="add-normal")
    after = version.entry["thresholds"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    memory = version.entry["details"]["memory"]
    capped = " (capped by k-center)" if memory.get("selection") else ""
    click.echo(f"version {version.number} of {out}: {len(parts)} images added; memory of {memory['shots']} "
               f"images{capped}; image threshold {fmt(before.image_threshold)} -> {fmt(after['image'])}, "
               f"pixel threshold {fmt(before.pixel_threshold)} -> {fmt(after['pixel'])}")


if __name__ == "__main__":
    sys.exit(main())
