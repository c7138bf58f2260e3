"""What a teach would do, before it happens: thresholds old -> new, and the line's recent frames re-decided.

The new version is built exactly as it would be written (runtime/profiles/teach.py's
`taught_change`, with the line's recent frames as the threshold's floor) but not
written; the recent frames the loop keeps (recent.py) are scored against the
current memory and the new one, each with its threshold, and the verdicts that
would flip are counted. A confirmed preview makes the change again from the
same version, the same parts and the same recent-frame scores, so what is
written is what the operator saw.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from winclip.runtime.line.recent import RecentFrames, as_reference
from winclip.runtime.profiles.teach import GoodPart, taught_change


@dataclass
class Preview:
    """A computed, unwritten teach waiting for the operator's confirmation."""

    id: str
    base: int  # the profile version it was computed on: it may be confirmed only while that one is in use
    parts: list[GoodPart]
    recent_scores: np.ndarray | None  # the line's frames under the new memory: the floor, made again on confirming
    items: list[int]
    summary: dict
    created: float = field(default_factory=time.time)


def _decide(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    return np.zeros(len(scores), bool) if threshold is None else scores >= threshold


def preview_teach(detector, store, parts: list[GoodPart], recent: RecentFrames | None, *, source: str | None,
                  in_force: tuple[float | None, float | None], keep: tuple[bool, bool], items: list[int],
                  who: str, why: str) -> Preview:
    """Build the change for `parts` on the current version and measure it on the recent frames (`source`'s,
    or every source's when None). in_force: the image and pixel thresholds the loop uses now; keep: whether
    the command line pinned them (then a new version does not move them)."""
    started = time.perf_counter()
    base, version = store.load()
    every = recent.frames() if recent is not None else []
    everyone = as_reference(every)
    base_scores = everyone.score(detector, base.memory)[0] if everyone is not None else np.zeros(0)
    taught = {(p.origin.get("source"), p.origin.get("frame")) for p in parts}
    others = np.array([(f.source, f.frame) not in taught for f in every], bool)  # the line, but the parts taught
    scored = {}

    def score_recent(memory) -> np.ndarray:  # every recent frame under the new memory, once: floor and flips
        scored["all"] = everyone.score(detector, memory)[0] if everyone is not None else np.zeros(0)
        return scored["all"][others]

    change = taught_change(detector, base, version, parts, who=who, why=why, action="teach",
                           recent_scores=score_recent)
    recent_scores = scored["all"][others]
    new_image = in_force[0] if keep[0] else change.profile.image_threshold
    new_pixel = in_force[1] if keep[1] else change.profile.pixel_threshold

    mine = [i for i, f in enumerate(every) if source is None or f.source == source]
    before = _decide(base_scores[mine], in_force[0])
    after = _decide(scored["all"][mine], new_image)
    flagged, good = int(before.sum()), int((~before).sum())
    to_good, to_bad = int((before & ~after).sum()), int((~before & after).sum())

    held = change.details.get("held_out_false_alarms", {"flagged": 0, "of": 0})
    held_before = held.get("flagged_before", 0)
    entry = change.profile.record.get("thresholds", {}).get("image") or {}
    rate = entry.get("false_alarm_rate")
    floor = entry.get("recent_floor")

    where = f"of {source}" if source is not None else "of every source"
    words = [f"image threshold {_num(in_force[0])} -> {_num(new_image)}"
             + ("" if None in (new_image, in_force[0]) or _num(new_image) == _num(in_force[0])
                else " (lower: more parts pass)" if new_image < in_force[0] else " (higher: fewer parts flagged)"),
             f"pixel threshold {_num(in_force[1])} -> {_num(new_pixel)}"]
    if mine:
        words.append(f"checked on the last {len(mine)} scored frames {where}")
        words.append(f"{to_good} of the last {flagged} flagged frames would now pass")
        words.append(f"{to_bad} of the last {good} good frames would now be flagged")
    else:
        words.append(f"no recent frames {where} to check this against")
    if held["of"]:
        words.append(f"held-out normals flagged: {held_before} of {held['of']} -> {held['flagged']} of {held['of']}"
                     + (f" (the profile's target: {100 * rate:g} %)" if isinstance(rate, (int, float)) else ""))
    if floor and floor.get("raised"):
        words.append(f"the line's last {floor['recent_frames']} frames hold the image threshold at "
                     f"{_num(new_image)}: the taught parts alone would have lowered it to {_num(floor['derived'])}")
    summary = {"id": secrets.token_urlsafe(12), "base_version": version.number, "items": items,
               "source": source, "image_threshold": [in_force[0], new_image], "pixel_threshold": [in_force[1], new_pixel],
               "recent": {"frames": len(mine), "flagged": flagged, "good": good, "anomalous_to_good": to_good,
                          "good_to_anomalous": to_bad, "where": where},
               "held_out": {"of": held["of"], "flagged_before": held_before, "flagged_after": held["flagged"],
                            "false_alarm_rate": rate},
               "recent_floor": floor, "warn": bool(to_good or to_bad), "words": words,
               "took_s": round(time.perf_counter() - started, 3)}
    # the change itself (its memory, the reference set's outputs) is not kept: a preview waiting for its
    # confirmation holds the parts and a few hundred scores, and confirming makes the same change again
    return Preview(summary["id"], version.number, parts, recent_scores, items, summary)


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"
