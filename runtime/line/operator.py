"""The operator's side of a live run: history for the page, drift alarms, and teaching the line.

`OperatorDesk` sits between the scoring loop and the live page:

- it sees every event before the sinks do (`observe`): the score trend, the
  gallery of anomalous frames, the profile version on each frame event, and the
  drift watch, whose `drift` / `drift_cleared` events go to the sinks;
- it keeps the newest scored frames of each source with their graph outputs
  (recent.py), so that a teach can be previewed on them;
- it takes the page's write requests (already let through by the WriteGuard):
  "this part is good" on a gallery frame or a posted image is two steps, a
  preview (preview.py: computed on the caller's thread, never the loop's) and
  its confirmation, which writes exactly the previewed version; "undo" is
  one. A worker thread writes each as a new version of the line profile
  (runtime/profiles/teach.py, runtime/profiles/versions.py), one at a time;
- it switches the detector to a version the worker finished, on the loop
  thread, before the next batch (`between_batches`): memory and thresholds
  change between two frames, never inside a batch, and each switch is a
  `profile_changed` event. A version written by someone else (winclip-calibrate
  --add-normal on the same profile) is picked up the same way.

Everything the loop writes to the sinks is written from the loop thread.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.images import ImageReadError, decode_image
from winclip.runtime.line import defaults
from winclip.runtime.line.access import OperatorTokens, WriteGuard
from winclip.runtime.line.drift import DriftWatch
from winclip.runtime.line.fanout import EventFanout
from winclip.runtime.line.history import Gallery, ScoreTrend
from winclip.runtime.line.interfaces import EventWriter
from winclip.runtime.line.preview import Preview, preview_teach
from winclip.runtime.line.recent import RecentFrames
from winclip.runtime.profiles.profile import LineProfile
from winclip.runtime.profiles.versions import ProfileStore, Version, versioned_parent
from winclip.runtime.profiles.teach import GoodPart, TeachError, reference_scores, taught_change

if TYPE_CHECKING:
    from winclip.runtime.detector import Detector
    from winclip.runtime.line.status import LiveStatus

log = logging.getLogger(__name__)

WATCH_S = 2.0  # how often the worker looks for a version written by someone else
PREVIEW_WAIT_S = 30.0  # how long a preview waits for the one being computed


class OperatorError(WinclipError):
    """An operator request that cannot be done, with the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """A write the worker does: teach parts or undo; its state as the page shows it."""

    id: int
    action: str  # "teach" | "undo" | "use" (a chosen earlier version)
    who: str
    why: str
    parts: list = field(default_factory=list)
    items: list = field(default_factory=list)  # gallery ids taught
    state: str = "queued"  # queued | running | written | applied | failed
    detail: str = ""
    version: int | None = None
    created: float = field(default_factory=time.time)
    target: int | None = None  # the version a "use" asks for
    preview: Preview | None = None  # a teach writes the change its confirmed preview computed

    def to_json(self) -> dict:
        return {"id": self.id, "action": self.action, "state": self.state, "detail": self.detail,
                "version": self.version, "who": self.who, "items": self.items, "created": self.created}


@dataclass
class Switch:
    """A profile version ready for the loop to use."""

    profile: LineProfile
    version: Version
    action: str
    who: str
    why: str
    job: Job | None = None


class OperatorDesk:
    """History, drift and profile changes for one live run (see the module docstring)."""

    def __init__(self, detector: Detector, status: LiveStatus, events: EventWriter | list, *, profile_path: Path | None = None,
                 token: OperatorTokens | str | None = None,
                 history: bool = True, overlay_root: Path | None = None, keep_threshold: bool = False,
                 keep_pixel_threshold: bool = False, drift: DriftWatch | None = None):
        self.detector, self.status = detector, status
        self.events = EventFanout.of(events)  # the run's fan-out (or the sinks for one): drift and profile changes
        self.guard = WriteGuard(token)
        self.trend = ScoreTrend() if history else None
        self.gallery = Gallery(overlay_root=overlay_root) if history else None
        self.keep_threshold, self.keep_pixel_threshold = keep_threshold, keep_pixel_threshold
        self.profile_path = None if profile_path is None else Path(profile_path)
        self.store: ProfileStore | None = None
        self.version: int | None = None
        self.teach_refusal = "teaching needs a line profile: start winclip-inspect with --profile"
        reference = None
        if self.profile_path is not None:
            inside = versioned_parent(self.profile_path)
            if inside is not None:
                self.teach_refusal = (f"{self.profile_path} is one version of {inside}: start with --profile {inside} "
                                      "to teach it")
                reference = reference_scores(LineProfile.load(self.profile_path))
                self.version = int(self.profile_path.name[1:])
            else:
                self.store = ProfileStore(self.profile_path)
                profile, version = self.store.load()
                self.version, reference = version.number, reference_scores(profile)
                self.teach_refusal = None
        # the recent frames a teach is previewed on: only where a page can teach (they cost memory)
        self.recent = RecentFrames() if self.store is not None and history else None
        if self.recent is not None:
            detector.keep_outputs = True
        self._previews: dict[str, Preview] = {}
        self._previewing = threading.Lock()  # one preview at a time: each scores the recent frames twice
        self.drift = drift or DriftWatch(reference)
        if drift is not None:
            drift.reset(reference)
        self.changes = 0
        self.review = None  # the review desk (open_review), when the run serves its page
        self._seen = self.version  # the newest version the worker knows of (applied or waiting)
        self._lock = threading.Lock()
        self._pending: list[Switch] = []
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=defaults.TEACH_QUEUE)
        self._recent_jobs: deque[Job] = deque(maxlen=20)
        self._job_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        status.attach("operator", self.snapshot)
        if self.store is not None:
            self._worker = threading.Thread(target=self._work, name="operator-desk", daemon=True)
            self._worker.start()

    # --- the loop's side
    def between_batches(self) -> None:
        """Use the newest finished profile version: memory and thresholds change here, between two batches."""
        with self._lock:
            switches, self._pending = self._pending, []
        for switch in switches:
            self._apply(switch)

    def observe(self, outputs=None):
        """The Inspection's on_event: `outputs` (LiveOutputs) first, then history and drift on each scored frame."""

        def on_event(frame, outcome, event: dict) -> None:
            preview = outputs(frame, outcome, event) if outputs is not None else None
            if "error" in event:
                return
            if self.version is not None:
                event["profile_version"] = self.version
            flagged = None
            score, anomalous = event["image_score"], event.get("anomalous")
            if self.trend is not None:
                self.trend.add(frame.source, score, anomalous, event.get("threshold"))
            if self.recent is not None:
                self.recent.add(frame, outcome)
            if anomalous and self.gallery is not None:
                try:
                    # the preview LiveOutputs drew is the gallery's picture (both at the page's width)
                    flagged = self.gallery.add(frame, outcome, event, self.version, jpeg=preview)
                except (OSError, ValueError) as exc:  # a picture that cannot be drawn: the page misses one item
                    log.debug("gallery: %s", first_line(exc))
            if self.review is not None:
                self.review.observe(frame, event, flagged)
            notice = self.drift.observe(frame.source, score, anomalous)
            if notice is not None:
                self._emit(notice)
                if notice["event"] == "drift":
                    log.warning("%s: drift: the scores of normal parts moved %s (KS distance %.2f against the %s "
                                "reference); the line may have changed", notice["source"], notice["direction"],
                                notice["ks_distance"], notice["reference"])
                else:
                    log.info("%s: drift cleared after %.0f s", notice["source"], notice["lasted_s"])

        return on_event

    def _emit(self, event: dict) -> None:
        if self.review is not None:
            self.review.note(event)
        self.events.write(event)

    def _apply(self, switch: Switch) -> None:
        profile, old = switch.profile, self.version
        self.detector.set_memory(profile.memory)
        if not self.keep_threshold:
            self.detector.threshold = profile.image_threshold
        if not self.keep_pixel_threshold:
            self.detector.pixel_threshold = profile.pixel_threshold
        self.version = switch.version.number
        if self.gallery is not None and self.store is not None:
            self.gallery.forget_taught_outside(self._lineage(self.version))
        self.drift.reset(reference_scores(profile))
        self.changes += 1
        event = {"event": "profile_changed", "time": round(time.time(), 3), "action": switch.action,
                 "profile": str(self.profile_path), "from": old, "to": self.version, "who": switch.who,
                 "why": switch.why, "threshold": self.detector.threshold,
                 "pixel_threshold": self.detector.pixel_threshold, "memory_shots": profile.memory.shots}
        if switch.job is not None and switch.job.items:
            event["taught"] = [self._taught_item(i) for i in switch.job.items]
        self._emit(event)
        if switch.job is not None:
            switch.job.state = "applied"
        log.info("profile %s: version %s -> %s (%s by %s)", self.profile_path, old, self.version, switch.action,
                 switch.who)

    def _lineage(self, number: int) -> set[int]:
        """The version and every one it was made from: an item taught into any other was undone."""
        try:
            parents = {v["version"]: v.get("parent") for v in self.store.read()["versions"]}
        except WinclipError:
            return {number}
        seen = set()
        while number is not None and number not in seen:
            seen.add(number)
            number = parents.get(number)
        return seen

    def _taught_item(self, item_id: int) -> dict:
        item = self.gallery.item(item_id) if self.gallery is not None else None
        if item is None:
            return {"id": item_id}
        self.gallery.mark_taught(item_id, self.version)
        return {"id": item_id, "source": item.source, "frame": item.frame, "time": item.captured, "score": item.score}

    # --- the page's side (the WriteGuard has let the request through)
    def _parts(self, item: int | None, image: bytes | None) -> tuple[list[GoodPart], list[int], str | None]:
        """The part a teach is about: a gallery frame (its original pixels) or a posted image."""
        if self.teach_refusal is not None:
            raise OperatorError(self.teach_refusal, 409)
        if item is not None:
            found = self.gallery.item(item) if self.gallery is not None else None
            if found is None:
                raise OperatorError(f"no gallery frame {item}", 404)
            if found.taught is not None:
                raise OperatorError(f"frame {found.source}#{found.frame} was taught already (version {found.taught})", 409)
            original = self.gallery.original(item)
            if original is None:
                raise OperatorError(f"the original pixels of {found.source}#{found.frame} are no longer kept (only "
                                    f"the newest {self.gallery.pictures} flagged frames are): post the image instead", 410)
            part = GoodPart(original, f"{found.source}#{found.frame}",
                            {"source": found.source, "frame": found.frame, "time": found.captured,
                             "score": found.score, "flagged_by_version": found.version})
            return [part], [item], found.source
        if image is not None:
            try:
                pixels = decode_image(image, "the posted image")
            except ImageReadError as exc:
                raise OperatorError(str(exc), 413 if "more than" in str(exc) else 400) from None
            return [GoodPart(pixels, "posted image", {"posted": round(time.time(), 3)})], [], None
        raise OperatorError("say which frame: {\"item\": ID} from the gallery, or post an image")

    def preview_teach(self, *, item: int | None = None, image: bytes | None = None, who: str = "",
                      why: str = "") -> dict:
        """Step one of "this part is good": what it would do (thresholds, the recent frames re-decided), computed
        on the caller's thread; nothing is written. Its id confirms it (`request_teach(preview=...)`)."""
        parts, items, source = self._parts(item, image)
        if not self._previewing.acquire(timeout=PREVIEW_WAIT_S):  # two at once wait in turn; a pile-up is refused
            raise OperatorError("other previews are being computed: try again in a moment", 503)
        try:
            preview = preview_teach(self.detector, self.store, parts, self.recent, source=source,
                                    in_force=(self.detector.threshold, self.detector.pixel_threshold),
                                    keep=(self.keep_threshold, self.keep_pixel_threshold), items=items, who=who,
                                    why=why)
        except (WinclipError, OSError, ValueError) as exc:
            raise OperatorError(f"the preview failed: {first_line(exc)}", 409) from None
        finally:
            self._previewing.release()
        with self._lock:
            self._previews[preview.id] = preview
            while len(self._previews) > defaults.PREVIEWS_KEPT:
                self._previews.pop(next(iter(self._previews)))
        return {**preview.summary, "expires": round(preview.created + defaults.PREVIEW_TTL_S, 3)}

    def request_teach(self, *, preview: str, who: str = "", why: str = "") -> Job:
        """Step two: write the version a preview computed, if that preview is still current."""
        if self.teach_refusal is not None:
            raise OperatorError(self.teach_refusal, 409)
        with self._lock:
            found = self._previews.get(preview)
            seen = self._seen
        if found is None:
            raise OperatorError("no such preview (or it was forgotten): preview the teach again", 404)
        if time.time() - found.created > defaults.PREVIEW_TTL_S:
            raise OperatorError(f"this preview is older than {defaults.PREVIEW_TTL_S:.0f} s: the line has moved on, "
                                "preview again", 409)
        if found.base != self.version or found.base != seen:
            raise OperatorError(f"the profile changed since this preview (it was made on version {found.base}, "
                                f"version {seen} is current now): preview again", 409)
        items = [self.gallery.item(i) for i in found.items] if self.gallery is not None else []
        taught = [i for i in items if i is not None and i.taught is not None]
        if taught:
            raise OperatorError(f"frame {taught[0].source}#{taught[0].frame} was taught already "
                                f"(version {taught[0].taught})", 409)
        with self._lock:
            self._previews.pop(preview, None)  # one confirmation per preview
        return self._queue(Job(next(self._job_ids), "teach", who, why, found.parts, found.items, preview=found))

    def request_undo(self, *, who: str = "", why: str = "") -> Job:
        if self.teach_refusal is not None:
            raise OperatorError(self.teach_refusal, 409)
        return self._queue(Job(next(self._job_ids), "undo", who, why))

    def request_use(self, version: int, *, who: str = "", why: str = "") -> Job:
        """Queue "use version K": any kept earlier (or later) version becomes current, recorded as a new event."""
        if self.teach_refusal is not None:
            raise OperatorError(self.teach_refusal, 409)
        if version == self.version:
            raise OperatorError(f"version {version} is already in use", 409)
        known = {entry["version"]: entry for entry in self.store.history()["versions"]}
        if version not in known:
            raise OperatorError(f"{self.profile_path} has no version {version}", 404)
        if known[version].get("pruned"):
            raise OperatorError(f"version {version} of {self.profile_path} is no longer on disk", 410)
        return self._queue(Job(next(self._job_ids), "use", who, why, target=version))

    def open_review(self, out: Path | None) -> None:
        """The review desk (episodes, reviews, labels, the run's history), kept in OUT when there is one."""
        from winclip.runtime.line.review import ReviewBook

        self.review = ReviewBook(out, self.status, label_root=self.label_root, gallery=self.gallery,
                                 versions=self.versions)

    @property
    def label_root(self) -> Path | None:
        """The profile folder whose labelled/ the review desk writes (a version folder's profile)."""
        if self.profile_path is None:
            return None
        return versioned_parent(self.profile_path) or self.profile_path

    def _queue(self, job: Job) -> Job:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise OperatorError(f"{defaults.TEACH_QUEUE} changes are already waiting: try again shortly", 503) from None
        with self._lock:
            self._recent_jobs.append(job)
        return job

    # --- the worker
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=WATCH_S)
            except queue.Empty:
                self._look_for_new_versions()
                continue
            job.state = "running"
            try:
                if job.action == "teach":
                    version = self.store.change(lambda base, at, job=job: self._confirmed(job, base, at))
                    job.detail = f"version {version.number} written"
                elif job.action == "use":
                    left, version = self.store.use(job.target, job.who, job.why)
                    job.detail = f"from version {left.number} to version {version.number}"
                else:
                    left, version = self.store.undo(job.who, job.why)
                    job.detail = f"back from version {left.number} to {version.number}"
                profile = LineProfile.load(version.folder)
                job.version, job.state, job.parts, job.preview = version.number, "written", [], None
                with self._lock:
                    self._pending.append(Switch(profile, version, job.action, job.who, job.why, job))
                    self._seen = version.number
            except (WinclipError, OSError, ValueError) as exc:
                job.state, job.detail, job.parts, job.preview = "failed", first_line(exc), [], None
                log.warning("%s by %s failed: %s", job.action, job.who, job.detail)
            except Exception as exc:  # noqa: BLE001 - a bug fails this one job; the desk goes on taking writes
                job.state, job.detail, job.parts, job.preview = "failed", f"internal error: {first_line(exc)}", [], None
                log.exception("%s by %s failed", job.action, job.who)

    def _confirmed(self, job: Job, base: LineProfile, at: Version):
        """The previewed change, only on the version it was previewed on (another writer may have come first)."""
        if at.number != job.preview.base:
            raise TeachError(f"the profile changed since the preview (version {at.number} is current, the preview "
                             f"was made on {job.preview.base}): preview again")
        preview = job.preview
        return taught_change(self.detector, base, at, preview.parts, who=job.who, why=job.why, action="teach",
                             recent_scores=preview.recent_scores)

    def _look_for_new_versions(self) -> None:
        """A version made current by someone else (winclip-calibrate --add-normal, another run): use it too."""
        try:
            current = self.store.version()
        except WinclipError:
            return
        with self._lock:
            known = self._seen
        if current.number == known:
            return
        try:
            profile = LineProfile.load(current.folder)
        except WinclipError as exc:
            log.warning("version %d of %s cannot be used: %s", current.number, self.profile_path, first_line(exc))
            return
        entry = current.entry
        with self._lock:
            self._seen = current.number
            self._pending.append(Switch(profile, current, entry.get("action", "changed"), entry.get("who", ""),
                                        entry.get("why", "")))

    # --- what the page and /metrics read
    def snapshot(self) -> dict:
        with self._lock:
            jobs = [j.to_json() for j in reversed(self._recent_jobs)]
        return {"profile": None if self.profile_path is None else str(self.profile_path), "version": self.version,
                "threshold": self.detector.threshold, "pixel_threshold": self.detector.pixel_threshold,
                "engine": self.detector.describe(), "teach": self.teach_refusal is None,
                "teach_refusal": self.teach_refusal, "access": self.guard.counts(), "changes": self.changes,
                "drift": self.drift.state(), "jobs": jobs,
                "recent_frames": self.recent.counts() if self.recent is not None else {}}

    def versions(self) -> dict:
        if self.store is None:
            return {"current": self.version, "versions": [], "log": []}
        history = self.store.history()
        return {**history, "log": history["log"][-50:], "in_use": self.version}

    def close(self, timeout: float = 0.0) -> None:
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
        if self.review is not None:
            self.review.close()
