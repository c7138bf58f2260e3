"""`winclip-eval`: the paper's six metrics on MVTec-AD, VisA or a line's own labelled parts."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import click

from winclip.calibration.evaluation.layouts import LAYOUTS
from winclip.runtime.command import CONTEXT, SHOWN_SKIPPED, Group, Whole, engine_choice_of, engine_options
from winclip.runtime.errors import first_line, install_hint

EVALUATE = "run"
INCOMPLETE_EXIT = 3  # --strict: the run finished but did not cover the whole data set
OUTPUT_MARKER = "results.json"
log = logging.getLogger("winclip.eval")  # not __name__: run as a script, that is "__main__"  # what makes a folder one of ours, for --force


class EvalGroup(Group):
    """`winclip-eval BUNDLE ...` is `winclip-eval run BUNDLE ...`; `prepare` and `synthesize` make data sets."""

    def collect_usage_pieces(self, ctx):
        return ["BUNDLE --dataset DIR [OPTIONS]  |", *super().collect_usage_pieces(ctx)]

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [EVALUATE, *args]
        return super().parse_args(ctx, args)


def _shots(ctx, param, value: str) -> tuple[int, ...]:
    try:
        shots = tuple(sorted({int(s) for s in value.split(",") if s.strip()}))
    except ValueError:
        raise click.BadParameter(f"expected shot counts like 0,1,2,4, got {value!r}") from None
    if not shots or shots[0] < 0:
        raise click.BadParameter("shot counts are whole numbers >= 0 (0 = zero-shot)")
    return shots


def _pixel_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x")) if "x" in value.lower() else (int(value),) * 2
    except ValueError:
        raise click.BadParameter(f"expected S or HxW in pixels, got {value!r}") from None
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise click.BadParameter("each side must be 8..4096 pixels")
    return h, w


def _objects(ctx, param, values) -> dict[str, str]:
    out = {}
    for value in values:
        category, sep, name = value.partition("=")
        if not sep or not category.strip() or not name.strip():
            raise click.BadParameter(f"expected CATEGORY=OBJECT NAME, got {value!r}")
        out[category.strip()] = name.strip()
    return out


@click.group(cls=EvalGroup, context_settings=CONTEXT)
def main():
    """Measure an engine bundle on labelled images: image AUROC, AUPR, F1-max and pixel AUROC, PRO, F1-max.

    winclip-eval BUNDLE --dataset DIR [options] evaluates (short for `winclip-eval run`);
    `winclip-eval prepare` and `winclip-eval synthesize` lay out evaluation sets from the
    real images that ship in the elpv-dataset and conformal-clip-data packages.
    """


@main.command(EVALUATE, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--dataset", type=click.Path(path_type=Path), required=True,
              help="Data set root: MVTec-AD, VisA (split_csv/1cls.csv) or the folder layout.")
@click.option("--layout", type=click.Choice(("auto", *LAYOUTS)), default="auto",
              help="Data set layout; auto detects it when only one fits.")
@click.option("--categories", multiple=True,
              help="Categories to evaluate, comma separated or repeated. [default: all]")
@click.option("--object", "objects", multiple=True, callback=_objects, metavar="CATEGORY=NAME",
              help="Object name for a category's text prompts. [default: the category name, '_' as space]")
@click.option("--shots", default="0,1,2,4", callback=_shots,
              help="Shot counts, comma separated: 0 = zero-shot WinCLIP, K > 0 = WinCLIP+ with K normal references.")
@click.option("--seeds", type=Whole(1, 100), default=3,
              help="Reference draws per K > 0 (results give mean and std over them).")
@click.option("--seed", type=Whole(0, 2**32 - 1), default=0, help="Seed of the first reference draw; draw i uses SEED + i.")
@click.option("--profile", type=click.Path(path_type=Path), default=None,
              help="Evaluate a line profile (winclip-calibrate): its memory, and what its thresholds do here.")
@click.option("--pixel-size", callback=_pixel_size, default=None, metavar="S|HxW",
              help="Resolution of the pixel metrics. [default: the engine's input size]")
@engine_options("Engine to evaluate (auto: as winclip-inspect chooses).")
@click.option("--batch-size", type=Whole(1, 1024), default=4, help="Images per session call.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for results.md/.csv/.json and report.html. [default: the table on stdout only]")
@click.option("--save-scores", is_flag=True,
              help="Also write OUT/scores/: every image score (CSV) and pixel map (.npy, float16) and the masks used.")
@click.option("--force", is_flag=True, help="Replace an existing --out folder of winclip-eval.")
@click.option("--strict", is_flag=True,
              help="Exit non-zero (3) when the run is INCOMPLETE: images, settings or categories were skipped.")
@click.pass_context
def run(ctx, bundle, **values):
    """Evaluate BUNDLE on a labelled data set: per category, each shot count, and the mean.

    Prints a markdown table; with --out also writes CSV, JSON and an HTML report
    (curves and heat-map overlays), all at once when the run completes.
    """
    from winclip.calibration.evaluation.metrics import require_sklearn
    from winclip.runtime.backends import backend_class
    from winclip.runtime.command import progress_bar, setup_logging

    backend_class(values["backend"])  # the chosen backend's library, named with its extra when missing
    require_sklearn()  # before minutes of scoring, not after
    setup_logging()
    from winclip.calibration.evaluation.evaluate import evaluate, planned_images, select_categories
    from winclip.calibration.evaluation.layouts import detect_layout
    from winclip.calibration.evaluation.report import markdown
    from winclip.runtime.atomic import staged_folder
    from winclip.runtime.errors import WinclipError

    dataset, out, save_scores, strict = values["dataset"], values["out"], values["save_scores"], values["strict"]
    if save_scores and out is None:
        raise click.ClickException("--save-scores needs --out")
    explicit = [p for p in ("shots", "seeds", "seed")
                if ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT]
    if values["profile"] is not None and explicit:
        raise click.ClickException(f"--profile evaluates the profile's own memory; drop --{explicit[0]}")
    if out is not None:
        _require_matplotlib()
    names = [n.strip() for value in values["categories"] for n in value.split(",") if n.strip()]
    options = _eval_options(values)
    try:
        layout = detect_layout(dataset) if values["layout"] == "auto" else values["layout"]
        selected = select_categories(dataset, layout, names, max(options.shots))
        with progress_bar(planned_images(selected, options), "scoring") as bar:
            if out is None:
                with tempfile.TemporaryDirectory(prefix="winclip-eval-") as work:
                    result = evaluate(bundle, dataset, layout, selected, options, Path(work), progress=bar.update)
                table = markdown(result)
            else:
                with staged_folder(out, values["force"], lambda p: (p / OUTPUT_MARKER).is_file()) as tmp:
                    result = evaluate(bundle, dataset, layout, selected, options, tmp / ".work",
                                      tmp / "scores" if save_scores else None, progress=bar.update)
                    shutil.rmtree(tmp / ".work", ignore_errors=True)
                    bar.set_description("writing the report")
                    table = _write_report(tmp, result, save_scores)
    except (WinclipError, ValueError, ImportError, FileExistsError) as exc:
        raise click.ClickException(first_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {first_line(exc)}" if out else first_line(exc)) from None
    click.echo(table)
    if result.incomplete:
        _warn_incomplete(result, strict)
    if out is not None:
        click.echo(f"results written to {out} (report: {out / 'report.html'})", err=True)
    if strict and result.incomplete:
        ctx.exit(INCOMPLETE_EXIT)


def _eval_options(values: dict):
    """What the evaluation runs (EvalOptions), from the command's values by parameter name."""
    from winclip.calibration.evaluation.evaluate import EvalOptions

    return EvalOptions(shots=values["shots"], seeds=values["seeds"], seed=values["seed"],
                       pixel_size=values["pixel_size"], objects=values["objects"], engine=engine_choice_of(values),
                       profile=values["profile"], backend=values["backend"], batch_size=values["batch_size"])


def _write_report(folder: Path, result, save_scores: bool) -> str:
    """results.md/.csv, report.html (and the scores' README) into the staged folder, results.json last (the
    marker of a finished run); the markdown table."""
    from winclip.calibration.evaluation.report import csv_text, html_report, json_text, markdown

    table = markdown(result)
    (folder / "results.md").write_text(table, encoding="utf-8")
    (folder / "results.csv").write_text(csv_text(result), encoding="utf-8")
    (folder / "report.html").write_text(html_report(result), encoding="utf-8")
    if save_scores:
        (folder / "scores" / "README.txt").write_text(SCORES_README, encoding="utf-8")
    (folder / OUTPUT_MARKER).write_text(json_text(result), encoding="utf-8")
    return table


def _warn_incomplete(result, strict: bool) -> None:
    """The first skipped images, a count of the rest, and the INCOMPLETE line."""
    skipped = [f"{c.name}: {line}" for c in result.categories for line in c.skipped]
    for line in skipped[:SHOWN_SKIPPED]:
        log.warning("skipped %s", line)
    if len(skipped) > SHOWN_SKIPPED:
        log.warning("skipped %d more images (every one, with its reason, in results.md / results.json)",
                    len(skipped) - SHOWN_SKIPPED)
    log.warning("INCOMPLETE: not the whole data set (%d reasons in the report)%s", len(result.incomplete),
                "" if strict else "; --strict makes this a failure")


SCORES_README = """Every number of results.csv can be recomputed from these files.
<category>/images.csv     index, file (relative to the data set), label (1 = defective), defect kind
<category>/masks.npy      uint8 (N, H, W) ground truth at the pixel size (1 = defect), nearest-neighbour resized
<category>/<run>.csv      index, image score
<category>/<run>.npy      float16 (N, H, W) pixel maps the pixel metrics were computed on
Runs are 0-shot, <K>-shot-seed<S> (references listed in results.json) and profile.
"""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException(f"the HTML report needs matplotlib: {install_hint('eval')}") from None


@main.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--source", "sources", multiple=True, type=click.Choice(("elpv", "textile")),
              default=("elpv", "textile"), help="Which packaged images to lay out; repeat for both.")
@click.option("--per-class", type=Whole(1, 10**6), default=None,
              help="At most this many images per class (good and each defect kind). [default: all]")
@click.option("--references", type=Whole(0, 10**6), default=16,
              help="Good images set aside in reference/ for the few-shot memory.")
@click.option("--seed", type=Whole(0, 2**32 - 1), default=0, help="Seed of the choice of images.")
@click.option("--sample", is_flag=True,
              help="The quick start's small set, per object: 24 good (4 for a memory + the 20 held-out normals a 5% "
                   "false-alarm rate needs), 8 reference, 6 of each defect kind. Overrides --per-class/--references.")
@click.option("--force", is_flag=True, help="Replace an existing folder written by this command.")
@click.pass_context
def prepare(ctx, out, sources, per_class, references, seed, sample, force):
    """Lay out the ELPV solar cells and the textiles in the folder layout (image labels only, no masks).

    OUT/solar_cell: good = defect probability 0, defect = probability 1 (1/3 and
    2/3 left out). OUT/textile: good = nominal, local and global defect kinds.
    """
    from winclip.calibration.evaluation.data import prepare as lay_out

    given = [p for p in ("per_class", "references") if ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT]
    if sample and given:
        raise click.UsageError("--sample sets the counts itself; drop --per-class/--references")
    _write_set(out, lambda: lay_out(out, sources, per_class, references, seed, force, sample))


@main.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--category", "categories", multiple=True, type=click.Choice(("textile", "solar_cell")),
              default=("textile", "solar_cell"), help="Real images to paint on; repeat for both.")
@click.option("--train", type=Whole(1, 10_000), default=4, help="Normal images in <category>/train/good.")
@click.option("--test-good", type=Whole(1, 10_000), default=4, help="Normal images in <category>/test/good.")
@click.option("--per-defect", type=Whole(1, 10_000), default=2,
              help="Images per defect kind (scratch, blob, spot), each with its mask.")
@click.option("--seed", type=Whole(0, 2**32 - 1), default=0, help="Seed of the images chosen and the defects painted.")
@click.option("--force", is_flag=True, help="Replace an existing folder written by this command.")
def synthesize(out, categories, train, test_good, per_defect, seed, force):
    """Write a small MVTec-AD-layout set with pixel masks: synthetic defects painted on real images."""
    from winclip.calibration.evaluation.data import synthesize as paint

    _write_set(out, lambda: paint(out, categories, train, test_good, per_defect, seed, force))


def _write_set(out: Path, write) -> None:
    """Run a data-set writer; one-line errors, then what each category got."""
    from winclip.calibration.evaluation.datasets import DatasetMissing

    try:
        summary = write()
    except (DatasetMissing, FileExistsError, ValueError) as exc:
        raise click.ClickException(first_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {first_line(exc)}") from None
    for category, counts in summary.items():
        click.echo(f"{out / category}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


if __name__ == "__main__":
    sys.exit(main())
