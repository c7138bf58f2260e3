"""The live run's wiring: a `LivePlan` in, sources read, frames scored, events out, everything closed at the end.

`LiveApp` owns what a run opens: its status, the sinks behind one
`EventFanout` (the only writer to them), the live page, the overlay writer,
one detector and one operator desk per part (cameras judged alike), the
Inspection and the LiveLoop. Every part's detector shares one engine session,
so a station's frames are embedded together. The command line (cli.py) and a
station file (station.py) only build the plan; a station's reload hands the app
a new plan, which it applies between two rounds of the loop.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass

from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.line import defaults
from winclip.runtime.line.fanout import EventFanout
from winclip.runtime.line.interfaces import Closable
from winclip.runtime.line.plan import CAMERA_SINK_KEYS, CameraPlan, LivePlan, PartPlan

log = logging.getLogger("winclip.inspect")  # the command's logger: its lines read as the command's


class RunError(WinclipError):
    """A live run that cannot start or could not go on, with a one-line reason."""


class Stopper:
    """SIGINT/SIGTERM while a run is on: the first asks it to finish the work in flight and close cleanly
    (`first(name)`); a second exits at once, after one line that says what is left (`last_words(name)`).
    Events are written a whole line per system call, so even then every file holds whole JSON lines.
    The handlers stay until the run has closed everything: a second signal during the closing is caught too.
    """

    def __init__(self, first, last_words):
        self.first, self.last_words = first, last_words
        self.signalled: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        import os

        name = signal.Signals(signum).name
        if self.signalled is not None:
            sys.stderr.write(f"\n{name} again: exiting now; {self.last_words(name)}\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signalled = name
        self.first(name)

    def __enter__(self) -> "Stopper":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def close_all(opened: list[Closable], timeout: float) -> None:
    """Close sinks and the server, newest first, each within `timeout`; a failure to close is a warning."""
    for thing in reversed(opened):
        try:
            thing.close(timeout)
        except Exception as exc:  # closing must reach every sink
            log.warning("closing %s failed: %s", type(thing).__name__, first_line(exc))


@dataclass
class Part:
    """A way of judging frames, live: its detector (on the shared engine) and its operator desk."""

    plan: PartPlan
    detector: object
    desk: object
    observe: object  # the desk's FrameObserver, with the run's outputs in front


def part_detector(engine, part: PartPlan):
    """The detector for `part` on `engine`'s session: its object, profile or normal images, and thresholds."""
    from winclip.runtime.images import read_image_folder

    try:
        detector = engine.sharing_engine(part.object_name, part.profile, threshold=part.threshold,
                                         pixel_threshold=part.pixel_threshold)
        if part.normal_dir is not None:
            normals = read_image_folder(part.normal_dir, part.shots)
            detector.build_memory(normals)
            log.info("WinCLIP+ memory from %d normal images (%s)", len(normals), part.normal_dir)
    except ValueError as exc:
        raise RunError(first_line(exc)) from None
    return detector


class LiveApp:
    """One live run of a plan: `open()`, then `run()` (why it stopped; everything is closed at its end);
    `reload(plan)` from any thread while it runs."""

    def __init__(self, engine, plan: LivePlan):
        from winclip.runtime.line.loop import StatusLine
        from winclip.runtime.line.status import LiveStatus

        self.engine, self.plan = engine, plan
        self.status = LiveStatus([camera.name for camera in plan.cameras])
        self.status_line = StatusLine(self.status)
        self.events = EventFanout()
        self.opened: list[Closable] = []  # closed newest first at the end
        self.sinks: list = []  # GuardedSinks, for the summary (those a reload closed stay counted)
        self.routes: dict[tuple, list] = {}  # what each sink is (_wanted_sinks' key) -> its open GuardedSinks
        self.server = None
        self.overlays = None
        self.outputs = None  # LiveOutputs
        self.parts: dict[PartPlan, Part] = {}
        self.cameras: dict[str, CameraPlan] = {}
        self.loop = None
        self.snapshot: dict | None = None  # the status at the end of the run
        self._pending: LivePlan | None = None  # a reload waiting for the loop thread
        self._pending_lock = threading.Lock()
        self.reloads = 0
        self.reload_seq = 0  # reloads applied or refused: the page waits for it to pass the one it asked for
        self.last_reload: dict | None = None  # the newest reloaded / reload_refused event, for the page
        self.closing_down = False  # the loop has stopped: no reload applies or is announced any more
        self._closing: list[threading.Thread] = []  # closing what reloads retired

    # --- opening
    def open(self) -> None:
        from winclip.runtime.command import setup_logging
        from winclip.runtime.line.events import LiveOverlayWriter
        from winclip.runtime.line.inspection import EngineScoring, Inspection
        from winclip.runtime.line.loop import LiveLoop, LiveOutputs

        setup_logging(before_emit=self.status_line.clear)
        out = self.plan.outputs
        try:
            wanted = self._wanted_sinks(self.plan)
            self._route(self._open_sinks(wanted), wanted)
            self._open_server()
            if any(self.plan.overlay_mode(camera) != "none" for camera in self.plan.cameras):
                try:
                    self.overlays = LiveOverlayWriter(out.out / defaults.OVERLAY_FOLDER, keep_days=out.keep_days,
                                                      keep_gb=out.keep_gb)
                except OSError as exc:
                    raise RunError(f"cannot write overlays to {out.out / 'overlays'}: {first_line(exc)}") from None
            self.outputs = LiveOutputs(self.status, self.overlays, out.overlays, preview=out.serve is not None)
            self._use_cameras(self.plan)
            self.engine.set_memory(None)  # the parts judge with their own memory: the engine's would be a copy
            if self.plan.station is not None:
                self.status.attach("station", self._station_status)
        except BaseException:
            close_all(self.opened, 0.0)
            raise
        scoring = EngineScoring(self.engine, self._detector_of, max_batch=self.engine.backend.live_batch)
        inspection = Inspection(scoring, self.events, on_event=self._observe, before_batch=self._between_batches)
        limits = self.plan.limits
        self.loop = LiveLoop(inspection, [camera.spec for camera in self.plan.cameras], self.status,
                             every=limits.every, max_frames=limits.max_frames, duration_s=limits.duration,
                             wait_for_source=limits.wait_for_source,
                             reader_options={"stall_s": limits.stall_timeout}, status_line=self.status_line)
        self.loop.between_rounds = self._apply_reload

    def _wanted_sinks(self, plan: LivePlan) -> dict[tuple, tuple]:
        """Every sink `plan` asks for, keyed by what it is (sink name, its plan, only) -> (name, plan, besides).
        The run's sinks take every camera but those with their own setting of that sink (`besides`: a reload
        that changes only which cameras those are keeps the sink open); each camera setting is its own sink,
        for the cameras with that setting only."""
        from winclip.runtime.line.sinks import SINKS

        out = plan.outputs
        own: dict[tuple[str, str, str], list[str]] = {}  # (sink name, key, value) -> cameras with that setting
        for camera in plan.cameras:
            for key, value in camera.sinks.items():
                own.setdefault((CAMERA_SINK_KEYS[key], key, value), []).append(camera.name)
        wanted = {}
        for name, sink_plan in out.sinks.items():
            besides = frozenset(c for (n, _, _), cameras in own.items() if n == name for c in cameras)
            wanted[(name, repr(sink_plan), None)] = (name, sink_plan, besides)
        for (name, key, value), cameras in own.items():
            sink_plan = SINKS[name].plan({**out.sink_values, key: value}, out.out)
            wanted[(name, repr(sink_plan), frozenset(cameras))] = (name, sink_plan, frozenset())
        return wanted

    def _open_sinks(self, wanted: dict[tuple, tuple]) -> dict[tuple, object]:
        """Open the sinks `wanted` names: {key: [GuardedSink, ...]}; on a failure none stays open."""
        from winclip.runtime.errors import MissingExtra
        from winclip.runtime.line.sinks import SINKS, GuardedSink

        opened: dict[tuple, list] = {}
        try:
            for key, (name, sink_plan, _) in wanted.items():
                only = key[2]
                try:
                    made = SINKS[name].open(sink_plan, self.status)
                except (MissingExtra, OSError) as exc:  # the message names the extra to install, or the path
                    raise RunError(first_line(exc)) from None
                opened[key] = [GuardedSink(sink, sink_name if only is None else
                                           f"{sink_name} ({', '.join(sorted(only))})", self.status)
                               for sink, sink_name in made]
        except BaseException:
            close_all([sink for sinks in opened.values() for sink in sinks], 0.0)
            raise
        return opened

    def _route(self, opened: dict[tuple, list], wanted: dict[tuple, tuple]) -> None:
        for key, sinks in opened.items():
            for sink in sinks:
                self.events.add(sink, only=key[2], besides=wanted[key][2])
                self.sinks.append(sink)
                self.opened.append(sink)
        self.routes.update(opened)

    def _open_server(self) -> None:
        out = self.plan.outputs
        if out.serve is None:
            return
        from winclip.runtime.errors import MissingExtra
        from winclip.runtime.line.server import LiveServer

        try:
            server = LiveServer(self.status, host=out.host, port=out.serve)
            server.start()
        except MissingExtra as exc:  # prometheus-client missing
            raise RunError(first_line(exc)) from None
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise RunError(f"--serve: {exc.strerror or first_line(exc)}") from None
        from winclip.runtime.line.access import WriteGuard

        server.guard = WriteGuard(out.token)  # writes that are not a desk's (a station's reload) ask for it too
        self.opened.append(server)
        self.server = server
        log.info("live page: %s", server.url)

    def _open_part(self, part: PartPlan, operator_page: bool) -> Part:
        from winclip.runtime.line.operator import OperatorDesk

        out = self.plan.outputs
        detector = part_detector(self.engine, part)
        desk = OperatorDesk(detector, self.status, self.events, profile_path=part.profile, token=out.token,
                            history=operator_page,
                            overlay_root=out.out / defaults.OVERLAY_FOLDER if self.overlays is not None else None,
                            keep_threshold=part.threshold is not None,
                            keep_pixel_threshold=part.pixel_threshold is not None)
        self.opened.append(desk)
        page = self.server.desk if self.server is not None else None
        if operator_page and page is not None and page.review is not None:
            # a reload that changed how the one part is judged: the page's history and review desk carry over
            desk.trend, desk.gallery, desk.review, page.review = page.trend, page.gallery, page.review, None
            desk.review.versions, desk.review.label_root = desk.versions, desk.label_root
        elif operator_page:
            desk.open_review(out.out)  # the review desk: episodes, reviews and labels, kept in OUT/review.json
        if out.token is not None and desk.teach_refusal is not None and operator_page:
            log.warning("the operator token unlocks undo and teaching, but %s", desk.teach_refusal)
        return Part(part, detector, desk, desk.observe(self.outputs))

    def _use_cameras(self, plan: LivePlan) -> None:
        """Open the parts `plan` names that are not open yet, then use them all at once; retire those no camera
        uses any more (closed off the loop thread). A part that fails to open leaves everything as it was."""
        parts = plan.parts
        # the operator's page (history, teaching, review) serves one part: a station of several parts shows
        # every camera's card, status and metrics, and is taught with winclip-calibrate (docs/inspect.md)
        operator_page = self.server is not None and len(parts) == 1
        page_desk = self.server.desk if self.server is not None else None
        opened: dict[PartPlan, Part] = {}
        try:
            for part in parts:
                kept = self.parts.get(part)
                # a part that becomes the page's (a reload down to one part) needs a desk with history
                if kept is None or (operator_page and kept.desk is not page_desk):
                    opened[part] = self._open_part(part, operator_page)
        except BaseException:
            self._close_later([p.desk for p in opened.values()], 0.0)
            for p in opened.values():
                self.opened.remove(p.desk)
            self._attach_operator()  # a desk attaches its section when it opens: the one in use again
            raise
        retired = [p.desk for key, p in self.parts.items() if key not in parts or key in opened]
        # parts and cameras change together: the page's threads read both
        self.parts, self.cameras = ({part: opened.get(part) or self.parts[part] for part in parts},
                                    {camera.name: camera for camera in plan.cameras})
        if self.server is not None:
            self.server.desk = self.parts[parts[0]].desk if operator_page else None
        for desk in retired:
            self.opened.remove(desk)
        if retired:
            self._close_later(retired, 0.0)
        self.outputs.overlay_modes = {camera.name: plan.overlay_mode(camera) for camera in plan.cameras}
        for camera in plan.cameras:  # each card says how its camera is judged
            self.status.describe(camera.name, self._judged_by(camera))
        self._attach_operator()

    def _attach_operator(self) -> None:
        """The status' operator section: the page's desk, the one part's desk, or the station's summary."""
        desk = self.server.desk if self.server is not None else None
        if desk is None and len(self.parts) == 1:
            desk = next(iter(self.parts.values())).desk
        self.status.attach("operator", desk.snapshot if desk is not None else self._station_section)

    def _judged_by(self, camera: CameraPlan) -> str:
        part = self.parts.get(camera.part)
        if part is None:  # a reload is changing it right now
            return ""
        words = [part.detector.object_name]
        if camera.part.profile is not None:
            words.append(f"profile {camera.part.profile.name} v{part.desk.version}")
        if part.detector.threshold is not None:
            words.append(f"threshold {part.detector.threshold:.4g}")
        return " · ".join(words)

    def _station_section(self) -> dict:
        """The page's and /metrics' operator section when several parts share the run: each camera's drift from
        its own part's desk, and why the page does not teach (each part's profile is taught on its own)."""
        drift, changes = {}, 0
        for part in list(self.parts.values()):
            state = part.desk.drift.state()
            drift.update({name: state[name] for name, camera in self.cameras.items()
                          if camera.part == part.plan and name in state})
            changes += part.desk.changes
        refusal = (f"this run judges its cameras {len(self.parts)} ways: teach a camera's profile with "
                   "winclip-calibrate --add-normal (the station picks the new version up between two frames)")
        guard = self.server.guard if self.server is not None and self.server.guard is not None else None
        return {"profile": None, "version": None, "threshold": None, "pixel_threshold": None,
                "engine": self.engine.backend.describe(), "teach": False, "teach_refusal": refusal,
                "access": guard.counts() if guard is not None else {"writable": False, "allowed": 0, "refused": {},
                                                                    "operators": []},
                "changes": changes, "drift": drift, "jobs": [], "recent_frames": {},
                "cameras": {name: self._judged_by(camera) for name, camera in list(self.cameras.items())}}

    # --- the loop's hooks (the loop thread)
    def _part_of(self, source: str) -> Part:
        return self.parts[self.cameras[source].part]

    def _detector_of(self, frame):
        return self._part_of(frame.source).detector

    def _observe(self, frame, outcome, event: dict) -> None:
        part = self._part_of(frame.source)
        if len(self.parts) > 1 and "error" not in event:
            event["object"] = part.detector.object_name
        part.observe(frame, outcome, event)

    def _between_batches(self) -> None:
        changes = sum(part.desk.changes for part in self.parts.values())
        for part in self.parts.values():
            part.desk.between_batches()
        if sum(part.desk.changes for part in self.parts.values()) != changes:  # a new profile version: the cards
            for camera in self.cameras.values():
                self.status.describe(camera.name, self._judged_by(camera))

    # --- a station's reload
    def reload(self, plan: LivePlan) -> None:
        """Take a new plan (checked already); the loop applies it between two rounds. Any thread."""
        with self._pending_lock:
            self._pending = plan

    def _apply_reload(self) -> None:
        with self._pending_lock:
            plan, self._pending = self._pending, None
        if plan is None:
            return
        old = self.plan
        try:
            changes = self._swap(old, plan)
        except (WinclipError, OSError, ValueError) as exc:
            self.refuse_reload(first_line(exc), plan.station)
            return
        self.reloads += 1
        self._note_reload({"event": "reloaded", "time": round(time.time(), 3), **changes,
                           **({"station": str(plan.station)} if plan.station else {})})
        log.info("reloaded %s: %s", plan.station or "the plan", ", ".join(f"{k} {', '.join(v)}"
                                                                             for k, v in changes.items() if v) or
                 "nothing changed")

    def refuse_reload(self, reason: str, station=None) -> None:
        """A reload that cannot be applied: one event, one warning; the run keeps its configuration."""
        if self.closing_down:
            return
        log.warning("reload refused: %s; the station keeps its configuration", reason)
        self._note_reload({"event": "reload_refused", "time": round(time.time(), 3), "reason": reason,
                           **({"station": str(station)} if station else {})})

    def _note_reload(self, event: dict) -> None:
        self.reload_seq += 1
        self.last_reload = event
        self.events.write(event)

    def _station_status(self) -> dict:
        """The page's station line: its file, reloads so far and the last one's outcome."""
        return {"file": str(self.plan.station), "reloads": self.reloads, "seq": self.reload_seq,
                "last": self.last_reload}

    def _swap(self, old: LivePlan, new: LivePlan) -> dict:
        """Apply `new` over `old`: sinks, parts, then cameras; what changed, by camera."""
        if self.overlays is None and any(new.overlay_mode(camera) != "none" for camera in new.cameras):
            raise RunError("saving overlays needs a restart: this run started without any camera saving them")
        before = {camera.name: camera for camera in old.cameras}
        after = {camera.name: camera for camera in new.cameras}
        wanted = self._wanted_sinks(new)
        opened = self._open_sinks({k: v for k, v in wanted.items() if k not in self.routes})  # before the old go
        previous_plan, self.plan = self.plan, new
        try:
            self._use_cameras(new)
        except BaseException:
            self.plan = previous_plan
            close_all([sink for sinks in opened.values() for sink in sinks], 0.0)
            raise
        for key, sinks in self.routes.items():  # kept sinks: the cameras with their own setting may have changed
            if key in wanted:
                for sink in sinks:
                    self.events.retarget(sink, besides=wanted[key][2])
        closing = [sink for key in list(self.routes) if key not in wanted for sink in self.routes.pop(key)]
        for sink in closing:
            self.events.remove(sink)
            self.opened.remove(sink)
        self._route(opened, wanted)
        if closing:  # the old sinks deliver what they hold off the loop thread (the run's end waits for them)
            self._close_later(closing, new.limits.flush_timeout)
        removed = [name for name in before if name not in after]
        added = [name for name in after if name not in before]
        changed = [name for name in after if name in before and after[name] != before[name]]
        for name in removed:
            self.loop.remove_source(name)
            self.status.forget(name)
        for name in added:
            self.status.add(name)
            self.loop.add_source(after[name].spec)
        for name in changed:
            if after[name].spec != before[name].spec:
                if (after[name].spec.text, after[name].spec.kind) != (before[name].spec.text, before[name].spec.kind):
                    self.loop.remove_source(name)
                    self.loop.add_source(after[name].spec)
                else:
                    self.loop.retune_source(after[name].spec)
        sinks = {"sinks_opened": [sink.name for sinks in opened.values() for sink in sinks],
                 "sinks_closed": [sink.name for sink in closing]}
        return {"added": added, "removed": removed, "changed": changed, **{k: v for k, v in sinks.items() if v}}

    # --- the run
    def run(self) -> tuple[str | None, str | None]:
        """Score until stopped: (why it stopped, the failure that stopped it or None)."""
        from winclip.runtime.line.loop import EngineFailed
        from winclip.runtime.line.sources import SourceError

        self.events.write(self._started())
        failure, reason = None, None
        with Stopper(self.stop, lambda name: "the events written so far are whole lines; what the sinks still "
                                             "held is lost"):
            try:
                reason = self.loop.run()
            except (SourceError, EngineFailed) as exc:
                failure = str(exc)
            finally:
                self.loop.close()
            self.closing_down = True  # a reload still on its way is dropped from here on
            self._finish_closing(self.plan.limits.flush_timeout)
            self.snapshot = self.status.snapshot()
            self.events.write(self._stopped(failure or reason))
            close_all(self.opened, self.plan.limits.flush_timeout)
        return reason, failure

    def _close_later(self, things: list, timeout: float) -> None:
        """Close sinks or desks a reload retired, off the loop thread; the run's end waits for them."""
        closer = threading.Thread(target=close_all, args=(things, timeout), name="closing retired", daemon=True)
        closer.start()
        self._closing.append(closer)

    def _finish_closing(self, timeout: float) -> None:
        for closer in self._closing:
            closer.join(timeout + 10.0)  # a desk's worker may take a moment past the sinks' flush

    def stop(self, name: str) -> None:
        """Ask the loop to finish the batch in flight and stop (a signal handler calls this)."""
        self.loop.stop_reason = name
        self.loop.stop.set()

    def _started(self) -> dict:
        first = next(iter(self.parts.values()))
        event = {"event": "run_started", "time": round(time.time(), 3),
                 "sources": [camera.name for camera in self.plan.cameras],
                 # a station's parts share the engine: it is described without any one part's object
                 "engine": self.engine.describe() if self.plan.station is None else self.engine.backend.describe(),
                 "threshold": first.detector.threshold, "pixel_threshold": first.detector.pixel_threshold}
        if first.plan.profile is not None:
            event.update(profile=str(first.plan.profile), profile_version=first.desk.version)
        if self.plan.station is not None:
            event["station"] = str(self.plan.station)
            event["cameras"] = {name: self._camera_summary(camera) for name, camera in self.cameras.items()}
        return event

    def _camera_summary(self, camera: CameraPlan) -> dict:
        part = self.parts[camera.part]
        summary = {"object": part.detector.object_name, "threshold": part.detector.threshold,
                   "pixel_threshold": part.detector.pixel_threshold}
        if camera.part.profile is not None:
            summary.update(profile=str(camera.part.profile), profile_version=part.desk.version)
        return summary

    def _stopped(self, reason: str | None) -> dict:
        snap = self.snapshot
        return {"event": "run_stopped", "time": round(time.time(), 3), "reason": reason,
                **{k: snap[k] for k in ("scored", "errors", "anomalous", "dropped")},
                "sinks": self._sink_stats(),
                "events": dict(self.events.counts)}

    def _sink_stats(self) -> dict:
        """Each sink's counts by its name; a sink a reload reopened under the same name is counted apart ("#2")."""
        stats: dict[str, dict] = {}
        for sink in self.sinks:
            name, n = sink.name, 1
            while name in stats:
                n += 1
                name = f"{sink.name} #{n}"
            stats[name] = sink.stats()
        return stats

    def summary(self, reason: str) -> str:
        from winclip.runtime.line.sinks import sink_report

        report = sink_report(self.sinks)
        return self.loop.summary(reason) + (f"; sinks: {report}" if report else "")


def run_live(engine, plan: LivePlan, on_open=None) -> None:
    """Run `plan` on `engine` (a Detector whose session every part shares) until it stops; RunError when it
    could not start, failed, or scored nothing. `on_open(app)` runs once everything is open (a station's
    SIGHUP handler)."""
    app = LiveApp(engine, plan)
    app.open()
    if on_open is not None:
        on_open(app)
    reason, failure = app.run()
    if failure is not None:
        raise RunError(failure)
    log.info("%s", app.summary(reason))
    if app.snapshot["scored"] == 0 and reason == "every source ended":
        raise RunError(f"no frame could be scored ({app.snapshot['errors']} errors)")
