"""The review desk of a live run: flagged frames grouped into episodes, reviews and labels, and the run's history.

An **episode** is one alert: a run of flagged frames of one source. A flagged
frame joins its source's open episode when at most REVIEW_GAP_FRAMES frames of
that source were judged normal since the episode's last flagged frame and it was
captured at most REVIEW_GAP_S seconds after it; otherwise it starts a new one.
So one part that is flagged on several frames in a row (a score dipping under
the threshold for a frame included) is one alert, and a source that stops and
comes back starts a new one. Each episode keeps its **best** frame: the one
with the highest score (its overlay, and its original pixels for labelling).

A person at the page (with an operator token) **acknowledges** an episode
(who, when, a note) or **labels** its best frame: "this part is good" or "this
is a defect" of some kind. A label writes the original pixels (what the loop
scored, never the overlay) as a lossless PNG into `<profile>/labelled/<kind>/`
(runtime/labelled.py), the layout `winclip-calibrate --labelled` and
`winclip-eval --layout folder` read, so the line's test set grows from its own
misses.

Episodes, reviews, labels and the history of drift and source outages are kept
in `OUT/review.json` (when the run has --out): replaced atomically, at once after
a review or label and within REVIEW_FLUSH_S after new frames, and read again by
the next run into the same OUT. Episodes of earlier runs keep their reviews;
their pictures come from OUT/overlays when the run saved them. Bounded:
REVIEW_EPISODES episodes, REVIEW_HISTORY drift and outage entries, and the
original pixels of the newest REVIEW_ORIGINALS episodes in memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime, timezone
from pathlib import Path

from winclip.runtime.atomic import write_atomic
from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.images import jpeg_bytes, png_bytes
from winclip.runtime.labelled import GOOD, LABELLED_FOLDER, LabelError, defect_kind
from winclip.runtime.line import defaults
from winclip.runtime.line.history import KeptImages, saved_overlay
from winclip.runtime.line.status import DOWN
from winclip.runtime.profiles.versions import clean_text

log = logging.getLogger(__name__)

REVIEW_NAME = "review.json"
REVIEW_FORMAT = "winclip-edge-review"
REVIEW_SCHEMA = 1
VERDICTS = ("new", "acknowledged", "good", "defect")  # what a person said of an episode (new: nothing yet)


class ReviewError(WinclipError):
    """A review request that cannot be done, with the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def verdict(episode: dict) -> str:
    """new, acknowledged, good or defect: the newest label wins over an acknowledgement."""
    labels = episode.get("labels") or []
    if labels:
        return GOOD if labels[-1]["kind"] == GOOD else "defect"
    return "acknowledged" if episode.get("review") else "new"


class ReviewBook:
    """Episodes, reviews, labels and history of one run (see the module docstring). Thread-safe: the loop
    observes frames, the page's threads read and write, a small thread persists and watches source health."""

    def __init__(self, out: Path | None, status, *, label_root: Path | None = None, gallery=None, versions=None,
                 gap_frames: int = defaults.REVIEW_GAP_FRAMES, gap_s: float = defaults.REVIEW_GAP_S,
                 start_thread: bool = True):
        self.path = None if out is None else Path(out) / REVIEW_NAME
        self.overlay_root = None if out is None else (Path(out) / defaults.OVERLAY_FOLDER).resolve()
        self.status, self.gallery, self.versions = status, gallery, versions
        self.label_root = None if label_root is None else Path(label_root)
        self.gap_frames, self.gap_s = gap_frames, gap_s
        self.run = int(time.time() * 1000)  # gallery ids are this run's: episodes of other runs have other runs
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.episodes: OrderedDict[int, dict] = OrderedDict()
        self.drift: deque[dict] = deque(maxlen=defaults.REVIEW_HISTORY)
        self.outages: deque[dict] = deque(maxlen=defaults.REVIEW_HISTORY)
        self._open: dict[str, int] = {}  # source -> its open episode
        self._normal_since: dict[str, int] = {}  # source -> frames judged normal since its last flagged frame
        self._originals = KeptImages(defaults.REVIEW_ORIGINALS, int(defaults.REVIEW_ORIGINALS_MB * (1 << 20)))
        self._down: dict[str, dict] = {}  # source -> its open outage
        self._labelling: set[int] = set()  # episodes whose label is being written: a second label waits its turn
        self.counts = {"reviews": 0, "labels": {}}  # this run's, for /metrics
        self._dirty = False
        self._load()
        self._next_id = max(self.episodes, default=0) + 1
        status.attach("review", self.summary)
        self._stopping = threading.Event()
        self._thread = None
        if start_thread:
            self._thread = threading.Thread(target=self._keep, name="review-desk", daemon=True)
            self._thread.start()

    # --- the loop's side
    def observe(self, frame, event: dict, flagged=None) -> None:
        """Every scored frame (in scoring order per source): a flagged one joins or starts an episode."""
        source = frame.source
        with self._lock:
            if not event.get("anomalous"):
                if source in self._normal_since:
                    self._normal_since[source] += 1
                return
            captured = float(frame.captured)
            current = self.episodes.get(self._open.get(source, -1))
            if current is None or not self._continues(current, source, captured):
                current = self._start(source, captured)
            self._normal_since[source] = 0
            current["end"] = max(current["end"], captured)
            current["frames"] += 1
            if current["first_frame"] is None:
                current["first_frame"] = frame.index
            current["last_frame"] = frame.index
            score = float(event["image_score"])
            if current["best"] is None or score > current["best"]["score"]:
                current["best"] = {"frame": frame.index, "time": captured, "score": score,
                                   "threshold": event.get("threshold"), "version": event.get("profile_version"),
                                   "regions": len(event.get("regions") or []),
                                   "item": None if flagged is None else flagged.id, "overlay": event.get("overlay")}
                if frame.image is not None:
                    self._originals.put(current["id"], frame.image)
            self._dirty = True

    def _continues(self, episode: dict, source: str, captured: float) -> bool:
        # the open episode is always this run's: _open is never filled from review.json
        return self._normal_since.get(source, 0) <= self.gap_frames and captured - episode["end"] <= self.gap_s

    def _start(self, source: str, captured: float) -> dict:
        episode = {"id": self._next_id, "run": self.run, "source": source, "start": captured, "end": captured,
                   "frames": 0, "first_frame": None, "last_frame": None, "best": None, "review": None, "labels": []}
        self._next_id += 1
        self.episodes[episode["id"]] = episode
        self._open[source] = episode["id"]
        while len(self.episodes) > defaults.REVIEW_EPISODES:
            old, _ = self.episodes.popitem(last=False)
            self._originals.pop(old)
        return episode

    def note(self, event: dict) -> None:
        """An event the desk emits: drift episodes go into the history (versions come from the profile's log)."""
        kind = event.get("event")
        with self._lock:
            if kind == "drift":
                self.drift.append({"source": event.get("source"), "start": event.get("time"), "end": None,
                                   "direction": event.get("direction"), "distance": event.get("ks_distance")})
            elif kind == "drift_cleared":
                for entry in reversed(self.drift):
                    if entry["source"] == event.get("source") and entry["end"] is None:
                        entry["end"] = event.get("time")
                        break
            else:
                return
            self._dirty = True

    def watch_health(self) -> None:
        """Outages from the sources' health: one entry from when a source went down to when it came back."""
        sources = {name: {"health": s.health, "since": s.since, "detail": s.detail}
                   for name, s in list(self.status.sources.items())}
        with self._lock:
            for name, state in sources.items():
                down = state["health"] in DOWN
                outage = self._down.get(name)
                if down and outage is None:
                    outage = {"source": name, "start": state["since"], "end": None, "detail": state["detail"]}
                    self._down[name] = outage
                    self.outages.append(outage)
                    self._dirty = True
                elif not down and outage is not None:
                    outage["end"] = state["since"]
                    del self._down[name]
                    self._dirty = True

    # --- the page's side
    def listing(self, *, source: str | None = None, verdict_is: str | None = None, since: float | None = None,
                until: float | None = None, limit: int = defaults.REVIEW_LISTING,
                versions: dict | None = None) -> dict:
        """Episodes newest first within the filters, the sources and verdict counts, and the history (its
        versions from `versions`, the profile's history when the caller has read it already)."""
        now = time.time()
        with self._lock:  # only copies under the lock: the loop's observe() waits on it
            every = list(self.episodes.values())
            chosen = [e for e in reversed(every)
                      if (source is None or e["source"] == source)
                      and (verdict_is is None or verdict(e) == verdict_is)
                      and (since is None or e["end"] >= since) and (until is None or e["start"] <= until)]
            listed = [self._public(e, now) for e in chosen[:limit]]
            sources = sorted({e["source"] for e in every} | set(getattr(self.status, "sources", {}) or {}))
            tally = {v: 0 for v in VERDICTS}
            for e in every:
                tally[verdict(e)] += 1
            history = {"drift": [dict(h) for h in self.drift], "outages": [dict(h) for h in self.outages]}
        for episode in listed:  # files are looked at outside the lock
            episode["picture"] = self._has_picture(episode)
        history["versions"] = self._version_log() if versions is None else list(versions.get("log", []))
        return {"episodes": listed, "matched": len(chosen), "total": len(every), "sources": sources,
                "verdicts": tally, "history": history,
                "persisted": None if self.path is None else str(self.path),
                "labels_to": None if self.label_root is None else str(self.label_root / LABELLED_FOLDER),
                "gap": {"frames": self.gap_frames, "seconds": self.gap_s}, "now": round(now, 3)}

    def _public(self, episode: dict, now: float) -> dict:
        """An episode as the page reads it (under the lock; `picture` is filled in outside it)."""
        return {**_copy(episode), "verdict": verdict(episode), "this_run": episode["run"] == self.run,
                "original": episode["id"] in self._originals, "picture": None, "open": self._is_open(episode, now)}

    def _is_open(self, episode: dict, now: float) -> bool:
        """Whether a flagged frame of its source would still join it (the gap rule, counted from now)."""
        source = episode["source"]
        return (episode["run"] == self.run and self._open.get(source) == episode["id"]
                and self._normal_since.get(source, 0) <= self.gap_frames and now - episode["end"] <= self.gap_s)

    def _has_picture(self, episode: dict) -> bool:
        """Whether picture() has something to send: the gallery keeps only its newest JPEGs, the disk the saved."""
        item = (episode["best"] or {}).get("item")
        if episode["run"] == self.run and item is not None and self.gallery is not None \
                and self.gallery.has_jpeg(item):
            return True
        return self._disk_overlay(episode) is not None

    def _version_log(self) -> list:
        if self.versions is None:
            return []
        try:
            return list(self.versions().get("log", []))
        except (WinclipError, OSError) as exc:
            log.debug("review: versions unreadable: %s", first_line(exc))
            return []

    def picture(self, episode_id: int) -> bytes | None:
        """The overlay of an episode's best frame: the gallery's (this run), else the one saved in OUT/overlays."""
        with self._lock:
            episode = self.episodes.get(episode_id)
            episode = None if episode is None else dict(episode)
        if episode is None:
            return None
        item = (episode["best"] or {}).get("item")
        if episode["run"] == self.run and item is not None and self.gallery is not None:
            jpeg = self.gallery.picture(item)
            if jpeg is not None:
                return jpeg
        path = self._disk_overlay(episode)
        try:
            return None if path is None else path.read_bytes()
        except OSError:
            return None

    def original_jpeg(self, episode_id: int) -> bytes | None:
        with self._lock:
            image = self._originals.get(episode_id)
        return None if image is None else jpeg_bytes(image, quality=90)

    def _disk_overlay(self, episode: dict) -> Path | None:
        return saved_overlay((episode.get("best") or {}).get("overlay"), self.overlay_root)

    def acknowledge(self, episode_id: int, who: str, note: str = "") -> dict:
        """Mark an episode reviewed: who, when, a note. Persisted before this returns."""
        with self._lock:
            episode = self._episode(episode_id)
            episode["review"] = {"who": clean_text(who, "unknown"), "time": round(time.time(), 3),
                                 "note": clean_text(note, "")}
            self.counts["reviews"] += 1
            self._dirty = True
            public = self._public(episode, time.time())
        self.save(sync=True)
        public["picture"] = self._has_picture(public)
        return public

    def label(self, episode_id: int, who: str, note: str = "", *, good: bool, kind: str | None = None) -> dict:
        """Label an episode's best frame: good, or a defect of `kind` (a folder name, never a reserved one such
        as good; "defect" when not given). Its original pixels go into <profile>/labelled/<kind>/ as PNG.
        One label per episode, even when two people press at once. Persisted before this returns."""
        if self.label_root is None:
            raise ReviewError("labels are written into the line profile: start winclip-inspect with --profile", 409)
        kind = GOOD if good else self._kind("defect" if kind is None else kind)
        with self._lock:
            episode = self._episode(episode_id)
            if episode["labels"]:
                last = episode["labels"][-1]
                raise ReviewError(f"episode {episode_id} is labelled {last.get('kind')} already"
                                  + (f" ({last['file']})" if last.get("file") else ""), 409)
            if episode_id in self._labelling:
                raise ReviewError(f"episode {episode_id} is being labelled by someone else just now", 409)
            image = self._originals.get(episode_id)
            if image is None:
                raise ReviewError(f"the original pixels of episode {episode_id} are no longer kept (only those of "
                                  f"the newest {defaults.REVIEW_ORIGINALS} episodes of this run are)", 410)
            self._labelling.add(episode_id)  # from here to the append: no second label of this episode
            best = dict(episode["best"] or {})
        try:
            path = self._write_label(kind, episode, best, image)
            entry = {"kind": kind, "who": clean_text(who, "unknown"), "time": round(time.time(), 3),
                     "file": str(path), "note": clean_text(note, "")}
            with self._lock:
                episode["labels"].append(entry)
                self.counts["labels"][kind] = self.counts["labels"].get(kind, 0) + 1
                self._dirty = True
                public = self._public(episode, time.time())
        finally:
            with self._lock:
                self._labelling.discard(episode_id)
        self.save(sync=True)
        public["picture"] = self._has_picture(public)
        log.info("episode %d labelled %s by %s: %s", episode_id, kind, entry["who"], entry["file"])
        return public

    def _write_label(self, kind: str, episode: dict, best: dict, image) -> Path:
        """The PNG of a label, under a name no other label has: sources whose names read alike (cam 1, cam_1)
        may share a frame number and millisecond, so the episode's id is in the name, and a taken name is
        never replaced."""
        folder = self.label_root / LABELLED_FOLDER / kind
        stem = (f"{_slug(episode['source'])}-f{best.get('frame', 0)}-{_stamp(best.get('time') or time.time())}"
                f"-e{episode['id']}")
        path = folder / f"{stem}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(2, 100):
                if not path.exists():
                    break
                path = folder / f"{stem}-{n}.png"
            else:
                raise ReviewError(f"{folder} has too many labels named {stem}-*.png", 409)
            write_atomic(path, png_bytes(image), sync=True)
        except OSError as exc:
            raise ReviewError(f"cannot write {path}: {exc.strerror or first_line(exc)}", 500) from None
        return path

    @staticmethod
    def _kind(kind: str) -> str:
        try:
            return defect_kind(kind)
        except LabelError as exc:
            raise ReviewError(str(exc)) from None

    def _episode(self, episode_id: int) -> dict:
        episode = self.episodes.get(episode_id)
        if episode is None:
            raise ReviewError(f"no episode {episode_id}", 404)
        return episode

    def summary(self) -> dict:
        """For /status.json and /metrics: episodes by verdict, and this run's reviews and labels."""
        with self._lock:
            tally = {v: 0 for v in VERDICTS}
            for e in self.episodes.values():
                tally[verdict(e)] += 1
            return {"episodes": tally, "reviews": self.counts["reviews"], "labels": dict(self.counts["labels"]),
                    "persisted": None if self.path is None else str(self.path)}

    # --- persistence
    def save(self, *, sync: bool = False) -> None:
        """Write review.json atomically (when the run has an OUT folder); `sync` (after a review or a label,
        which the answer says are kept) waits until it is on the disk, so a power cut cannot take it back."""
        if self.path is None:
            return
        with self._write_lock:
            with self._lock:  # a copy under the lock; serialised outside it, so the loop does not wait
                data = {"format": REVIEW_FORMAT, "schema_version": REVIEW_SCHEMA, "saved": round(time.time(), 3),
                        "episodes": [_copy(e) for e in self.episodes.values()],
                        "drift": [dict(h) for h in self.drift], "outages": [dict(h) for h in self.outages]}
                self._dirty = False
            try:
                body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
                write_atomic(self.path, body, sync=sync)
            except (OSError, TypeError, ValueError) as exc:  # a value JSON cannot hold must not stop the saves
                self._dirty = True
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
                log.warning("cannot save the review desk to %s: %s", self.path, reason)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != REVIEW_FORMAT or data.get("schema_version") != REVIEW_SCHEMA:
                raise ValueError(f"not a {REVIEW_FORMAT} file of schema {REVIEW_SCHEMA}")
            episodes = [_episode_from(raw) for raw in data.get("episodes", [])]
            history = [[h for h in data.get(k, []) if isinstance(h, dict) and isinstance(h.get("source"), str)]
                       for k in ("drift", "outages")]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            aside = self.path.with_name(f"{REVIEW_NAME}.unreadable-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = None
            log.warning("%s could not be read (%s): the review desk starts empty%s", self.path,
                        first_line(exc) if isinstance(exc, Exception) else exc, f"; kept as {aside}" if aside else "")
            return
        for episode in episodes[-defaults.REVIEW_EPISODES:]:
            if episode is not None:
                self.episodes[episode["id"]] = episode
        # drift or an outage still open when that run stopped (the camera lost, then the run killed) ended with it:
        # closed at its last save, and marked so, rather than dropped or "still drifting" for ever
        ended = data.get("saved")
        if not isinstance(ended, (int, float)) or isinstance(ended, bool):
            ended = max([e["end"] for e in self.episodes.values()] + [0.0]) or None
        for entry in history[0] + history[1]:
            if entry.get("end") is None:
                entry.update(end=ended, ended_with_run=True)
        self.drift.extend(history[0])
        self.outages.extend(history[1])

    def _keep(self) -> None:
        """Save what changed every REVIEW_FLUSH_S, and watch the sources' health every second."""
        last = time.monotonic()
        while not self._stopping.wait(1.0):
            try:
                self.watch_health()
            except Exception as exc:  # the watch must never end the thread that saves
                log.debug("review: health watch: %s", first_line(exc))
            if self._dirty and time.monotonic() - last >= defaults.REVIEW_FLUSH_S:
                try:
                    self.save()
                except Exception as exc:  # nothing may end this thread: it saves and watches for outages
                    log.warning("review: cannot save: %s", first_line(exc))
                last = time.monotonic()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            self.watch_health()
        except Exception as exc:
            log.debug("review: health watch: %s", first_line(exc))
        self.save()


def _episode_from(raw) -> dict | None:
    """An episode read back from review.json, with the fields the desk relies on, or None."""
    if not isinstance(raw, dict):
        return None
    try:
        episode = {"id": int(raw["id"]), "run": int(raw["run"]), "source": str(raw["source"]),
                   "start": float(raw["start"]), "end": float(raw["end"]), "frames": int(raw["frames"]),
                   "first_frame": raw.get("first_frame"), "last_frame": raw.get("last_frame"),
                   "best": raw.get("best") if isinstance(raw.get("best"), dict) else None,
                   "review": raw.get("review") if isinstance(raw.get("review"), dict) else None,
                   "labels": [x for x in raw.get("labels") or [] if isinstance(x, dict) and "kind" in x]}
    except (KeyError, TypeError, ValueError):
        return None
    return episode


def _copy(episode: dict) -> dict:
    """An episode as it is now: its `best` and `review` are replaced, never changed in place; labels are appended."""
    return {**episode, "labels": [dict(x) for x in episode["labels"]]}


def _slug(text: str) -> str:
    """A source name as part of a file name: letters, digits, '.', '_' and '-' only, at most 60 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-60:] or "source"


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{int(when * 1000) % 1000:03d}Z"
