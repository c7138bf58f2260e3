"""Line setup: a line profile from normal parts only (and, optionally, labelled ones).

K normal images, chosen reproducibly, become the WinCLIP+ memory. The other
normal images are scored as WinCLIP+ would score new parts (an image inside the
memory would match itself and score ~0) and set the thresholds for a target
false-alarm rate:

- image threshold: at most that fraction of held-out normal parts is flagged;
- pixel threshold: at most that fraction of held-out normal parts shows any
  defect region (the per-part maximum of the pixel map, at frame resolution).

With labelled parts (good/ and defect folders) the image AUROC and the F1-max
threshold on them are measured and stored too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from winclip.calibration.evaluation.layouts import folder_roles
from winclip.calibration.evaluation.metrics import auroc, f1_max, require_sklearn
from winclip.runtime.command import SHOWN_SKIPPED
from winclip.runtime.defaults import MEMORY_MAX_SHOTS, REFERENCE_MAX_HELD_OUT
from winclip.runtime.errors import WinclipError
from winclip.runtime.images import ImageReadError, decode_image, display_path, list_images, read_image_bytes
from winclip.runtime.profiles.reference import ReferenceSet, reference_writer
from winclip.runtime.thresholds import threshold_for_false_alarm_rate

log = logging.getLogger(__name__)

MIN_HELD_OUT = 5  # fewer normals than this give no usable threshold at all


class CalibrationError(WinclipError):
    """Calibration that cannot go ahead, with a one-line reason."""


@dataclass
class LoadedImage:
    """An image read for calibration, with the sha256 of its file (recorded in the profile)."""

    path: Path
    image: np.ndarray
    sha256: str


def read_folder(folder: Path, what: str, warn=log.warning) -> tuple[list[LoadedImage], list[str]]:
    """Every readable image under folder (sorted), and one line per image or sub-folder that was skipped."""
    try:
        paths, problems = list_images(folder)
    except ImageReadError as exc:
        raise CalibrationError(f"{what}: {exc}") from None
    loaded, skipped = [], list(problems)
    for path in paths:
        try:
            data = read_image_bytes(path)  # read once: the bytes that are hashed are the bytes decoded
            loaded.append(LoadedImage(path, decode_image(data, display_path(path)), hashlib.sha256(data).hexdigest()))
        except ImageReadError as exc:
            skipped.append(str(exc))
    for line in skipped[:SHOWN_SKIPPED]:
        warn(f"skipped ({what}): {line}")
    if len(skipped) > SHOWN_SKIPPED:
        warn(f"skipped ({what}): {len(skipped) - SHOWN_SKIPPED} more like these")
    return loaded, skipped


def needed_for_rate(rate: float) -> int:
    """Held-out normals needed before a false-alarm rate can be told apart from zero: ceil(1 / rate)."""
    return math.ceil(1.0 / rate - 1e-9)


def score_stats(scores: np.ndarray) -> dict:
    s = np.asarray(scores, dtype=np.float64)
    q = np.quantile(s, [0.5, 0.95, 0.99])
    return {"count": int(len(s)), "min": float(s.min()), "mean": float(s.mean()), "std": float(s.std()),
            "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "max": float(s.max())}


@dataclass
class Calibration:
    """What winclip-calibrate decided, and the numbers behind it."""

    record: dict
    normal_scores: np.ndarray
    normal_map_max: np.ndarray
    defect_scores: np.ndarray | None = None
    defect_map_max: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    write_reference: Callable[[Path], dict] | None = None  # the held-out reference set, for LineProfile.save(extra=)


def score_images(detector, images: list[LoadedImage], batch: int = 4, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and per-image maximum of the pixel map, one session call per batch."""
    scores, peaks = [], []
    for i in range(0, len(images), batch):
        results = detector([im.image for im in images[i:i + batch]])
        scores += [r.image_score for r in results]
        peaks += [float(r.anomaly_map.max()) for r in results]
        if progress is not None:
            progress(len(results))
    return np.array(scores), np.array(peaks)


def planned_images(*folders: Path | None) -> int | None:
    """Images calibrate will score from these folders (the progress bar's total); None when one cannot be listed."""
    try:
        return sum(len(list_images(folder)[0]) for folder in folders if folder is not None)
    except ImageReadError:
        return None


def calibrate(detector, normal_dir: Path, shots: int, false_alarm_rate: float, seed: int = 0,
              labelled_dir: Path | None = None, threshold_from: str = "false-alarm-rate",
              progress=None) -> Calibration:
    """Build the memory on `detector`, set its thresholds, and return the record for profile.json."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise CalibrationError(f"the false-alarm rate must be in (0, 1), got {false_alarm_rate}")
    if not 1 <= shots <= MEMORY_MAX_SHOTS:  # a profile holds at most this many images' worth (defaults.py)
        raise CalibrationError(f"shots must be 1..{MEMORY_MAX_SHOTS}, got {shots}")
    if labelled_dir is not None:
        require_sklearn()  # before minutes of scoring, not after
    warnings: list[str] = []

    def note(msg: str) -> None:  # warned now, and kept in the result
        warnings.append(msg)
        log.warning("%s", msg)

    normals, skipped = read_folder(normal_dir, "normal images", note)
    order = list(range(len(normals)))
    random.Random(seed).shuffle(order)
    needed = needed_for_rate(false_alarm_rate)
    if len(normals) < shots + MIN_HELD_OUT:
        raise CalibrationError(
            f"{display_path(normal_dir)} has {len(normals)} usable normal images; {shots + MIN_HELD_OUT} are needed at "
            f"the least ({shots} for the memory + {MIN_HELD_OUT} held out), {shots + needed} to resolve a "
            f"{false_alarm_rate:.2%} false-alarm rate")
    memory = [normals[i] for i in order[:shots]]
    held_out = [normals[i] for i in order[shots:]]
    if len(held_out) < needed:
        note(f"{len(held_out)} held-out normals cannot resolve a {false_alarm_rate:.2%} false-alarm rate "
             f"({needed} are needed): the thresholds sit at the highest normal scores, so the true rate is only "
             f"known to be below about {1 / len(held_out):.1%}")
    detector.build_memory([im.image for im in memory])
    if progress is not None:
        progress(len(memory))
    kept = held_out[:REFERENCE_MAX_HELD_OUT]  # their graph outputs stay in the profile (teaching, drift)
    reference = ReferenceSet.from_images(detector, [im.image for im in kept],
                                         [display_path(im.path.relative_to(normal_dir)) for im in kept], progress=progress)
    normal_scores, normal_peaks = reference.score(detector, detector.memory)
    if len(held_out) > len(kept):
        more_scores, more_peaks = score_images(detector, held_out[len(kept):], progress=progress)
        normal_scores, normal_peaks = np.r_[normal_scores, more_scores], np.r_[normal_peaks, more_peaks]
    image_t = threshold_for_false_alarm_rate(normal_scores, false_alarm_rate)
    pixel_t = threshold_for_false_alarm_rate(normal_peaks, false_alarm_rate)
    flagged = float(np.mean(normal_scores >= image_t))
    thresholds = {
        "image": {"value": image_t, "method": "false-alarm-rate", "false_alarm_rate": false_alarm_rate,
                  "held_out_normals": len(held_out), "flagged_held_out": flagged},
        "pixel": {"value": pixel_t, "method": "false-alarm-rate", "false_alarm_rate": false_alarm_rate,
                  "meaning": "at most this fraction of held-out normal parts shows any defect region",
                  "held_out_normals": len(held_out)},
    }
    record = {
        "normal_images": {
            "folder": display_path(normal_dir), "seed": seed, "shots": shots, "skipped": len(skipped),
            "memory": [{"file": display_path(im.path.relative_to(normal_dir)), "sha256": im.sha256} for im in memory],
            "held_out": [{"file": display_path(im.path.relative_to(normal_dir)), "sha256": im.sha256}
                         for im in held_out],
        },
        "normal_scores": {"image": score_stats(normal_scores), "pixel_max": score_stats(normal_peaks)},
        "expected_false_alarms_per_1000": round(1000 * flagged, 1),
        # with fewer held-out normals than the rate needs, the true rate is only known to be below ~1 / n
        "false_alarm_rate_resolved": len(held_out) >= needed,
    }
    defect_scores = defect_peaks = None
    if labelled_dir is not None:
        labelled, summary, defect_scores, defect_peaks = _labelled(detector, labelled_dir, note, progress)
        record["labelled"] = summary
        thresholds["image_f1_max"] = {"value": summary["f1_max_threshold"], "method": "f1-max",
                                      "f1": summary["f1_max"], "folder": summary["folder"]}
    if threshold_from == "f1-max":
        if "image_f1_max" not in thresholds:
            raise CalibrationError("--threshold-from f1-max needs --labelled DIR")
        thresholds["image"], thresholds["image_false_alarm_rate"] = thresholds["image_f1_max"], thresholds["image"]
    record["thresholds"] = thresholds
    detector.threshold = float(min(max(thresholds["image"]["value"], 0.0), 1.0))
    detector.pixel_threshold = float(min(max(pixel_t, 0.0), 1.0))
    write_reference = reference_writer(reference, None, normal_scores[:len(kept)], normal_peaks[:len(kept)])
    return Calibration(record, normal_scores, normal_peaks, defect_scores, defect_peaks, warnings, write_reference)


def _labelled(detector, folder: Path, note, progress) -> tuple[list, dict, np.ndarray, np.ndarray]:
    """Score a labelled folder as winclip-eval reads one (layouts.folder_roles): good/ holds normal parts,
    reference/ and masks/ are not test parts, every other folder is a kind of defect."""
    folder = Path(folder)
    if not (folder / "good").is_dir():
        raise CalibrationError(f"labelled folder {display_path(folder)} has no good/ sub-folder")
    roles = folder_roles(folder)
    kinds = roles.defects
    goods, _ = read_folder(roles.good, "labelled good", note)
    defects = []
    for kind in kinds:
        defects += read_folder(kind, f"labelled {kind.name}", note)[0]
    if not defects:
        raise CalibrationError(f"labelled folder {display_path(folder)} holds no defect images "
                               "(one folder per defect kind beside good/)")
    if not goods:
        raise CalibrationError(f"labelled folder {display_path(folder)} has no readable good images")
    good_scores, _ = score_images(detector, goods, progress=progress)
    defect_scores, defect_peaks = score_images(detector, defects, progress=progress)
    labels = np.r_[np.zeros(len(goods)), np.ones(len(defects))]
    scores = np.r_[good_scores, defect_scores]
    f1, threshold = f1_max(labels, scores)
    summary = {"folder": display_path(folder), "good": len(goods), "defect": len(defects),
               "defect_kinds": [k.name for k in kinds], "image_auroc": auroc(labels, scores),
               "f1_max": f1, "f1_max_threshold": threshold}
    return goods + defects, summary, defect_scores, defect_peaks
