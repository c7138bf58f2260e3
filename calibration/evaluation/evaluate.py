"""The evaluation loop: each category of a labelled set scored by the runtime's Detector, six metrics per run.

Per category the engine runs once over the test images; its raw outputs are kept
in memory-mapped files on disk (float32, in the work folder), and every setting
(0-shot, each K-shot seed, a line profile) re-scores them with its own memory.
The engine is ~99% of the time, so 0/1/2/4 shots with several seeds cost little
more than one pass.

What is held in RAM per category: the masks at the pixel size (bool) and the
pixel maps of the current run at the pixel size as float16 (N x H x W x 2 bytes,
~35 MB for 300 images at 240 x 240); never a full-resolution map. The pixel
metrics tally the float16 maps by value (metrics.PixelTally: ~6 more bytes a
pixel, briefly) instead of sorting every pixel.
"""

from __future__ import annotations

import csv
import logging
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from winclip.calibration.evaluation.engine_pass import OutputCache, embed_test_set, score_cached
from winclip.calibration.evaluation.layouts import Category, Sample, read_dataset
from winclip.calibration.evaluation.metrics import METRICS, PixelSet, counts_at_threshold, roc_points
from winclip.runtime.backends import DEFAULT_BACKEND, BackendOptions
from winclip.runtime.bundle import Bundle
from winclip.runtime.contract import normalize_object_name
from winclip.runtime.detector import Detector
from winclip.runtime.errors import WinclipError
from winclip.runtime.images import ImageReadError, display_path, read_image
from winclip.runtime.postprocess import heatmap_overlay, to_bgr8

log = logging.getLogger(__name__)
PROFILE_SETTING = "profile"


class EvaluationError(WinclipError):
    """An evaluation that cannot go ahead at all, with a one-line reason."""


@dataclass
class EvalOptions:
    """What winclip-eval runs: shot counts and seeds, pixel size, object names, engine and batch."""

    shots: tuple[int, ...] = (0, 1, 2, 4)
    seeds: int = 3  # reference draws per K > 0
    seed: int = 0  # the first draw's seed; draw i uses seed + i
    pixel_size: tuple[int, int] | None = None  # (height, width); None: the engine's input size
    objects: dict[str, str] = field(default_factory=dict)  # category -> object name, overriding the folder name
    engine: BackendOptions = BackendOptions()  # how to open the engine (device, precision, threads, ...)
    backend: str = DEFAULT_BACKEND  # winclip-eval passes its --backend (default: auto where two are installed)
    profile: Path | None = None  # evaluate this line profile's memory and thresholds instead of --shots
    batch_size: int = 4
    examples: int = 2  # overlays per kind (best/worst good, best/worst defective) in the report


@dataclass
class Run:
    """One setting of one category (0-shot, a K-shot seed, a profile): its metrics, scores and curves."""

    setting: str  # "0-shot", "4-shot", "profile"
    shots: int
    seed: int | None
    references: list[str]  # files of the few-shot memory, relative to the data set
    metrics: dict[str, float | None]
    scores: np.ndarray  # image scores, in the order of CategoryResult.files
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # "roc" and "pro": (x, y), for the pictures
    scoring_seconds: float
    thresholds: dict | None = None  # profile runs: what its thresholds do on this set

    @property
    def name(self) -> str:
        return self.setting if self.seed is None else f"{self.setting}-seed{self.seed}"


@dataclass
class Example:
    caption: str
    image: np.ndarray  # 8-bit BGR overlay at the pixel size


@dataclass
class CategoryResult:
    """A category's test set and every run on it, with what was skipped and why."""

    name: str
    object_name: str
    files: list[str]
    labels: np.ndarray
    defects: list[str]
    pixel_metrics: bool
    runs: list[Run] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # images left out, and why
    notes: list[str] = field(default_factory=list)  # settings left out, how references were chosen
    engine_seconds: float = 0.0  # preprocess + engine for the test images
    examples: list[Example] = field(default_factory=list)


@dataclass
class Evaluation:
    """A whole evaluation: the categories that ran, those that could not, and how it was run."""

    dataset: Path
    layout: str
    pixel_size: tuple[int, int]
    bundle: dict  # backbone, weights
    engine: dict  # precision, provider, file
    categories: list[CategoryResult]
    skipped_categories: list[tuple[str, str]]  # (name, reason)
    options: EvalOptions

    @property
    def incomplete(self) -> list[str]:
        """Why this is not the whole data set at every setting asked for (empty when it is)."""
        reasons = [f"category {name} not evaluated: {why}" for name, why in self.skipped_categories]
        for c in self.categories:
            if c.skipped:
                reasons.append(f"category {c.name}: {len(c.skipped)} images skipped")
            reasons += [f"category {c.name}: {n}" for n in c.notes if n.startswith("left out")]
        return reasons


def slug(name: str) -> str:
    """A file-name-safe form of a category or run name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "category"


def export_hint(bundle: Bundle, object_name: str) -> str:
    """The winclip-export command that makes a bundle holding this object too."""
    backbone = bundle.manifest.backbone
    weights = backbone.get("weights", {})
    pretrained = {"tag": weights.get("tag"), "file": weights.get("file"), "none": "none"}.get(weights.get("kind"))
    objects = " ".join(f"--object '{o}'" for o in [*bundle.objects, object_name])
    return (f"winclip-export --backbone {backbone.get('name')} --pretrained {pretrained or 'TAG|PATH'} {objects} "
            f"--out NEW_BUNDLE")


def _settings(options: EvalOptions) -> list[tuple[str, int, int | None]]:
    """(setting, K, seed) in the order they run."""
    if options.profile is not None:
        return [(PROFILE_SETTING, 0, None)]
    out = []
    for k in options.shots:
        out += [("0-shot", 0, None)] if k == 0 else [(f"{k}-shot", k, options.seed + i) for i in range(options.seeds)]
    return out


def planned_images(categories: list[Category], options: EvalOptions) -> int:
    """Images the engine will embed (test images + every drawn reference): the progress bar's total."""
    return sum(len(c.test) + sum(k for _, k, _ in _settings(options)) for c in categories)


def select_categories(dataset: Path, layout: str, names: list[str] | None, max_shots: int) -> list[Category]:
    """The data set's categories, or the named ones (EvaluationError for a name it does not have)."""
    categories = read_dataset(dataset, layout, max_shots)
    if names:
        known = {c.name for c in categories}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise EvaluationError(f"no category {', '.join(map(repr, unknown))} in {display_path(dataset)}; "
                                  f"it has: {', '.join(sorted(known)) or 'none'}")
        categories = [c for c in categories if c.name in names]
    if not categories:
        raise EvaluationError(f"{display_path(dataset)} holds no category to evaluate")
    return categories


def evaluate(bundle_path: Path, dataset: Path, layout: str, categories: list[Category], options: EvalOptions,
             work: Path, scores_dir: Path | None = None, progress: Callable[[int], None] = lambda n: None,
             ) -> Evaluation:
    """Evaluate these categories of the data set; those that cannot run are named in the result.

    work: a folder for the engine-output cache (about 1.7 MB per test image for
    ViT-B-16+, one category at a time). scores_dir: where --save-scores writes.
    """
    bundle = Bundle.load(bundle_path)
    size = tuple(options.pixel_size or bundle.manifest.preprocess.input_size)
    profile, profile_references = None, []
    if options.profile is not None:
        from winclip.runtime.profiles.profile import LineProfile

        profile = LineProfile.load(options.profile)
        normal = profile.record.get("normal_images")  # as winclip-calibrate wrote it; people may edit it
        listed = normal.get("memory") if isinstance(normal, dict) else None
        listed = listed if isinstance(listed, list) else []
        profile_references = [str(f.get("file")) for f in listed if isinstance(f, dict)]
        if len(categories) > 1:
            names = ", ".join(c.name for c in categories)
            raise EvaluationError(f"a line profile is for one part: choose one of {names} with --categories")
    result = Evaluation(dataset, layout, size, {k: bundle.manifest.backbone[k] for k in ("name", "open_clip_model",
                                                                                         "weights")},
                        {}, [], [], options)
    references_per_category = sum(k for _, k, _ in _settings(options))
    for category in categories:
        planned, done = len(category.test) + references_per_category, [0]

        def counted(n: int) -> None:
            done[0] += n
            progress(n)

        problem = category.problem
        object_name = normalize_object_name(profile.object_name if profile else
                                            options.objects.get(category.name, category.name))
        if problem is None and object_name not in bundle.objects:
            problem = (f"the bundle has no text embeddings for {object_name!r}; make a bundle that has them with: "
                       f"{export_hint(bundle, object_name)} (or name the object with --object "
                       f"{category.name}=NAME)")
        if problem:
            log.warning("category %s skipped: %s", category.name, problem)
            result.skipped_categories.append((category.name, problem))
            progress(planned)
            continue
        if profile is not None:
            detector = Detector.from_bundle(bundle, profile=profile, options=options.engine,
                                            backend=options.backend)
        else:
            detector = Detector(bundle, object_name=object_name, options=options.engine, backend=options.backend)
        result.engine = {"precision": detector.engine.precision, "file": detector.engine.file,
                         "provider": detector.backend.device,
                         "chosen": detector.backend.reason}
        folder = work / slug(category.name)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            outcome = _evaluate_category(detector, category, dataset, size, options, folder,
                                         None if scores_dir is None else scores_dir / slug(category.name), counted,
                                         profile_references)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        progress(max(0, planned - done[0]))  # what a skipped setting or category did not embed
        if isinstance(outcome, str):
            log.warning("category %s skipped: %s", category.name, outcome)
            result.skipped_categories.append((category.name, outcome))
        else:
            result.categories.append(outcome)
    if not result.categories:
        raise EvaluationError("no category could be evaluated: "
                              + "; ".join(f"{n}: {r}" for n, r in result.skipped_categories))
    return result


def _draw_references(pool: list[Path], shots: int, seed: int, dataset: Path,
                     skipped: list[str]) -> tuple[list[np.ndarray], list[str]] | None:
    """K readable normal images drawn from the pool with this seed (unreadable ones replaced in draw order)."""
    order = random.Random(seed).sample(sorted(pool), len(pool))
    frames, files = [], []
    for path in order:
        if len(frames) == shots:
            break
        try:
            frames.append(read_image(path))
            files.append(_relative(path, dataset))
        except ImageReadError as exc:
            line = f"{exc} (a reference image)"
            if line not in skipped:  # each seed may draw it again
                skipped.append(line)
    return (frames, files) if len(frames) == shots else None


def _relative(path: Path, root: Path) -> str:
    try:
        return display_path(path.relative_to(root))
    except ValueError:
        return display_path(path)


def run_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None,
                maps: np.ndarray) -> tuple[dict[str, float | None], dict]:
    """Every metric of the table (None where the set cannot give one) and the ROC and PRO curves."""
    metrics: dict[str, float | None] = dict.fromkeys(METRICS)
    metrics.update({m.name: m.compute(labels, scores) for m in METRICS.values() if m.level == "image"})
    curves = {"roc": roc_points(labels, scores)}
    if masks is not None and masks.any() and not masks.all():
        pixels = PixelSet(masks, maps)
        metrics.update({m.name: m.compute(pixels) for m in METRICS.values() if m.level == "pixel"})
        curves["pro"] = pixels.pro
    return metrics, curves


def _threshold_report(detector: Detector, labels, scores, masks, maps) -> dict:
    """What the profile's image and pixel thresholds do on this labelled set."""
    report = {}
    if detector.threshold is not None:
        report["image"] = counts_at_threshold(labels, scores, detector.threshold)
    if detector.pixel_threshold is not None:
        peaks = maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)
        report["parts_with_a_region"] = counts_at_threshold(labels, peaks, detector.pixel_threshold)
        if masks is not None:
            report["pixels"] = counts_at_threshold(masks, maps, detector.pixel_threshold)
    return report


def _examples(kept: list[Sample], labels, scores, maps, masks, count: int) -> list[Example]:
    """Overlays of the best and worst scored images: defects scored highest / lowest, goods lowest / highest."""
    chosen = []
    for label, kind in ((1, "defect"), (0, "good")):
        idx = np.flatnonzero(labels == label)
        ranked = idx[np.argsort(-scores[idx], kind="stable")]
        best, worst = (ranked[:count], ranked[::-1][:count]) if label else (ranked[::-1][:count], ranked[:count])
        chosen += [(i, f"best {kind}") for i in best] + [(i, f"worst {kind}") for i in worst if i not in best]
    # one colour scale for every overlay of the run, from its own pixel scores: a model whose scores sit in a
    # narrow band (0.25..0.35) shows its hot spots instead of plain blue on a fixed 0..1 scale
    lo, hi = (float(v) for v in np.percentile(maps[[i for i, _ in chosen]], (1.0, 99.9))) if chosen else (0.0, 1.0)
    hi = max(hi, lo + 1e-6)
    examples = []
    for i, what in chosen:
        try:
            image = to_bgr8(read_image(kept[i].path))
        except ImageReadError:
            continue
        h, w = maps.shape[1:]
        scaled = (maps[i].astype(np.float32) - lo) / (hi - lo)  # lo..hi -> 0..1: blue at lo, dark red at hi
        overlay = heatmap_overlay(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), scaled)
        if masks is not None and masks[i].any():
            contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
        examples.append(Example(f"{what}: {kept[i].defect}, score {scores[i]:.4f} ({kept[i].path.name}); "
                                f"colours: pixel score {lo:.3f} (blue) to {hi:.3f} (red)", overlay))
    return examples


def _save_run(folder: Path, run: Run, maps: np.ndarray) -> None:
    """The run's image scores (CSV) and the pixel maps it was measured on (.npy, float16)."""
    with open(folder / f"{run.name}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "score"])
        writer.writerows((i, repr(float(s))) for i, s in enumerate(run.scores))
    np.save(folder / f"{run.name}.npy", maps, allow_pickle=False)


def _save_test_set(folder: Path, result: CategoryResult, masks: np.ndarray | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "images.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "file", "label", "defect"])
        writer.writerows((i, f, int(lab), d) for i, (f, lab, d) in enumerate(zip(result.files, result.labels,
                                                                                   result.defects)))
    if masks is not None:
        np.save(folder / "masks.npy", masks.astype(np.uint8), allow_pickle=False)


def _evaluate_category(detector: Detector, category: Category, dataset: Path, size, options: EvalOptions,
                       work: Path, scores_dir: Path | None, progress,
                       profile_references: list[str]) -> CategoryResult | str:
    """Every setting of one category, or the reason none could run."""
    skipped = list(category.skipped)
    cache = OutputCache(work, len(category.test))
    try:
        kept, masks, seconds = embed_test_set(detector, category, size, options.batch_size, cache, progress, skipped)
        labels = np.array([s.label for s in kept], dtype=int)
        if not labels.any() or labels.all():
            missing = "no defective" if not labels.any() else "no good"
            return (f"after skipping {len(skipped)} unusable images, {missing} test images are left"
                    + (f" (first: {skipped[0]})" if skipped else ""))
        result = CategoryResult(category.name, detector.object_name, [_relative(s.path, dataset) for s in kept],
                                labels, [s.defect for s in kept], masks is not None, skipped=skipped,
                                engine_seconds=seconds)
        if category.note:
            result.notes.append(category.note)
        if scores_dir is not None:
            _save_test_set(scores_dir, result, masks)
        for setting, shots, seed in _settings(options):
            references = []
            if shots:
                drawn = _draw_references(category.references, shots, seed, dataset, skipped)
                progress(shots)
                if drawn is None:
                    note = (f"left out {setting}: fewer readable normal reference images "
                            f"({len(category.references)} listed) than shots ({shots})")
                    if note not in result.notes:
                        result.notes.append(note)
                        log.warning("category %s: %s", category.name, note)
                    continue
                frames, references = drawn
                detector.build_memory(frames, batch_size=options.batch_size)
            elif setting == PROFILE_SETTING:
                references = profile_references
            t0 = time.perf_counter()
            scores, maps = score_cached(detector, cache, size, options.batch_size)
            elapsed = time.perf_counter() - t0
            metrics, curves = run_metrics(labels, scores, masks, maps)
            shots = detector.memory.shots if detector.memory else 0  # a profile's K is its memory's
            run = Run(setting, shots, seed, references, metrics, scores, curves, elapsed)
            if setting == PROFILE_SETTING:
                run.thresholds = _threshold_report(detector, labels, scores, masks, maps)
            result.runs.append(run)
            if scores_dir is not None:
                _save_run(scores_dir, run, maps)
            # the report shows the last run's best and worst images (the largest K, its last seed)
            result.examples = _examples(kept, labels, scores, maps, masks, options.examples)
            if setting != PROFILE_SETTING:
                detector.set_memory(None)
        if not result.runs:
            return "no setting could run: " + "; ".join(result.notes)
        return result
    finally:
        cache.close()
