"""Teaching a line profile good parts: new normal images join the memory of a new profile version.

The images' WinCLIP+ features join the current memory (bounded: past
MEMORY_MAX_SHOTS images' worth of rows per part, greedy k-center keeps the rows
that cover the rest, coreset.py), their graph outputs join the reference set,
and the thresholds are re-derived: the held-out normals and the taught ones,
scored against the new memory, set the image and pixel thresholds for the false-
alarm rate the profile was calibrated for. An image threshold set another way
(F1-max on labelled parts) is kept as it is. The images themselves (original
pixels, lossless PNG) are kept in the new version's folder.

Shared by the live page ("this part is good") and `winclip-calibrate --add-normal`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from winclip.runtime.defaults import MEMORY_MAX_SHOTS, REFERENCE_MAX_TAUGHT
from winclip.runtime.errors import WinclipError
from winclip.runtime.images import png_bytes
from winclip.runtime.memory import FewShotMemory
from winclip.runtime.profiles.profile import LineProfile, ProfileError
from winclip.runtime.profiles.versions import Change, ProfileStore, Version, now_iso
from winclip.runtime.profiles.reference import ReferenceSet, reference_writer
from winclip.runtime.thresholds import threshold_for_false_alarm_rate

log = logging.getLogger(__name__)

TAUGHT_FOLDER = "taught"  # in a version folder: the images that version added
RECORD_LIST_MAX = 500  # taught images listed in a profile.json or a version's entry (the JSON stays small)


class TeachError(WinclipError):
    """A part that cannot be taught, with a one-line reason."""


@dataclass
class GoodPart:
    """An image a person says is a good part, with where it came from (source, frame, time, file...)."""

    image: np.ndarray
    name: str  # for people and the reference set: "camera:0#1841", "extra/part_07.png"
    origin: dict = field(default_factory=dict)

    def png(self) -> bytes:
        return png_bytes(self.image)


def reference_of(profile: LineProfile, folder: Path, output_names: list[str]) -> tuple[ReferenceSet, ReferenceSet]:
    """The (held_out, taught) reference groups a profile keeps; a profile without them cannot be taught."""
    record = profile.record.get("reference")
    if not isinstance(record, dict) or "held_out" not in record:
        raise ProfileError(f"{folder} keeps no reference set (it was made before winclip-edge kept one): re-run "
                           "winclip-calibrate to teach it parts")
    held_out = ReferenceSet.load(folder, record["held_out"], output_names, "reference.held_out")
    taught = (ReferenceSet.load(folder, record["taught"], output_names, "reference.taught")
              if record.get("taught") else ReferenceSet.empty(held_out))
    return held_out, taught


def derive_thresholds(profile_record: dict, scores: np.ndarray, peaks: np.ndarray,
                      current: tuple[float | None, float | None]) -> tuple[float | None, float | None, dict]:
    """Image and pixel thresholds for the recorded false-alarm rate from normal scores and map maxima.

    A threshold whose method is not the false-alarm rate (F1-max) is kept; so is one
    of a profile that records no rate. Returns (image, pixel, the updated thresholds record).
    """
    thresholds = {k: dict(v) if isinstance(v, dict) else v for k, v in profile_record.get("thresholds", {}).items()}
    values = list(current)
    for i, (kind, sample) in enumerate((("image", scores), ("pixel", peaks))):
        entry = thresholds.get(kind)
        if not isinstance(entry, dict) or entry.get("method") != "false-alarm-rate" or not len(sample):
            continue
        rate = entry.get("false_alarm_rate")
        if not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
            continue
        value = threshold_for_false_alarm_rate(sample, float(rate))
        values[i] = float(min(max(value, 0.0), 1.0))
        entry.update(value=values[i], reference_normals=int(len(sample)),
                     flagged_reference=float(np.mean(sample >= values[i])))
    return values[0], values[1], thresholds


def floor_threshold(thresholds: dict, image_t: float | None, recent_scores: np.ndarray,
                    in_force: float | None) -> float | None:
    """The image threshold, held up by what the line's recent frames call for at the profile's rate.

    Taught normals pull the memory toward themselves, so the held-out normals score lower and the derived
    threshold falls, while the line's other parts need not score lower at all (one taught frame once made 3
    of 43 good parts flag). The line's recent frames, scored against the new memory, set a floor by the same
    rule as the held-out normals (at most the rate of them at or above it), and a teach may not lower the
    threshold below it. The floor never raises the threshold above the one in force: it only stops a fall.
    Only a threshold whose method is the false-alarm rate is floored; the floor is recorded with it.
    """
    entry = thresholds.get("image")
    if image_t is None or not isinstance(entry, dict) or entry.get("method") != "false-alarm-rate":
        return image_t
    rate = entry.get("false_alarm_rate")
    if not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0 or not len(recent_scores):
        return image_t
    floor = float(min(max(threshold_for_false_alarm_rate(recent_scores, float(rate)), 0.0), 1.0))
    held = floor if in_force is None else min(floor, in_force)
    value = max(image_t, held)
    entry.update(value=value, recent_floor={"value": floor, "recent_frames": int(len(recent_scores)),
                                             "derived": image_t, "raised": bool(held > image_t)})
    return value


def rows_per_image(memory: FewShotMemory) -> dict[str, int]:
    """Rows one image gives each part of a memory built from whole images (none capped yet)."""
    return {part: rows.shape[0] // memory.shots for part, rows in memory.arrays().items()}


def taught_change(detector, base: LineProfile, base_version: Version, parts: list[GoodPart], *, who: str,
                  why: str, action: str, max_shots: int = MEMORY_MAX_SHOTS,
                  recent_scores=None) -> Change:
    """The next version of `base` with `parts` taught: memory, reference set, thresholds, the images kept.

    recent_scores: the image scores of the line's recent frames (the live loop keeps their outputs), other
    than the parts taught, against the new memory: an array, or a function of the new memory that computes
    them. The image threshold is not lowered below what they call for at the profile's rate
    (`floor_threshold`). A confirmed preview passes the array it computed: the change is then made again
    from the same base, parts and scores, as previewed.
    """
    if not parts:
        raise TeachError("nothing to teach: no images")
    problem = base.memory.key.mismatch(detector.memory_key)
    if problem:
        raise TeachError(f"the profile does not fit this detector: {problem}")
    held_out, taught = reference_of(base, base_version.folder, detector.output_names)
    images = [p.image for p in parts]
    added = ReferenceSet.from_images(detector, images, [p.name for p in parts])
    new_rows = FewShotMemory.from_outputs(added.outputs, detector.memory_key)
    memory = base.memory.joined(new_rows).capped(max_shots, rows_per_image(new_rows))
    taught = taught.joined(added).newest(REFERENCE_MAX_TAUGHT)
    reference = held_out.joined(taught) if len(taught) else held_out
    scores, peaks = reference.score(detector, memory)
    image_t, pixel_t, thresholds = derive_thresholds(base.record, scores, peaks,
                                                     (base.image_threshold, base.pixel_threshold))
    if callable(recent_scores):
        recent_scores = recent_scores(memory)
    if recent_scores is not None and len(recent_scores):
        image_t = floor_threshold(thresholds, image_t, recent_scores, base.image_threshold)
    held = scores[:len(held_out)]
    pngs = [(p, p.png()) for p in parts]
    digests = [hashlib.sha256(data).hexdigest() for _, data in pngs]
    files = [{"file": f"{TAUGHT_FOLDER}/{digest[:16]}.png", "sha256": digest, "name": p.name, "origin": p.origin}
             for (p, _), digest in zip(pngs, digests)]
    record = {k: v for k, v in base.record.items() if k not in ("memory", "reference")}
    record.update(created=now_iso(), thresholds=thresholds,
                  taught=[*base.record.get("taught", []), *[{**f, "version_from": base_version.number} for f in files]]
                  [-RECORD_LIST_MAX:])

    write_reference = reference_writer(held_out, taught, scores, peaks)

    def write(folder: Path) -> dict:
        (folder / TAUGHT_FOLDER).mkdir(exist_ok=True)
        for (_, data), entry in zip(pngs, files):
            (folder / entry["file"]).write_bytes(data)
        return write_reference(folder)

    details = {"added": [{k: v for k, v in f.items() if k != "sha256"} for f in files[:RECORD_LIST_MAX]],
               "added_count": len(files),
               "memory": {"shots": memory.shots, **({"selection": memory.selection} if memory.selection else {})},
               "reference_normals": len(reference),
               "held_out_false_alarms": {"flagged": _count_at(held, image_t), "of": int(len(held)),
                                         "flagged_before": _count_at(held_out.score(detector, base.memory)[0],
                                                                     base.image_threshold)}}
    return Change(LineProfile(memory, image_t, pixel_t, record), action, who, why, write, details)


def _count_at(scores: np.ndarray, threshold: float | None) -> int:
    return 0 if threshold is None else int(np.sum(scores >= threshold))


def teach(detector, store: ProfileStore, parts: list[GoodPart], *, who: str, why: str, action: str = "teach",
          max_shots: int = MEMORY_MAX_SHOTS) -> Version:
    """Write the next version of the profile at `store` with `parts` taught; returns it (now current)."""
    return store.change(lambda base, version: taught_change(detector, base, version, parts, who=who, why=why,
                                                            action=action, max_shots=max_shots))


def reference_scores(profile: LineProfile) -> np.ndarray | None:
    """The image scores of the profile's reference set under its own memory, as recorded; None when absent."""
    ref = profile.record.get("reference")
    scores = ref.get("image_scores") if isinstance(ref, dict) else None
    if not isinstance(scores, list) or not scores or not all(isinstance(s, (int, float)) for s in scores):
        return None
    return np.asarray(scores, dtype=np.float64)
