"""A station file: one `winclip-inspect` process for a line's cameras, each with its own part, profile and sinks.

    winclip-inspect --station station.toml [--check]

The file (TOML, read with the standard library's tomllib) says what the command
line says for one camera, for every camera: its keys are the command line's
option names (`--pixel-threshold` is `pixel_threshold`), checked by the very
same option types, ranges and defaults (the command's click parameters are the
one source of truth), in tables: `[engine]`, `[outputs]`, `[page]`, `[run]` and
one `[[camera]]` per camera. docs/inspect.md ("A station") lists every key and
docs/station.toml is a complete example.

Every problem is found before anything starts and reported one line each
(unknown keys with the nearest valid one, wrong types, duplicate cameras, a
profile made for another bundle or engine, a missing source file); `--check`
prints the plan and exits without opening any source. SIGHUP (or the page's
reload, for operators) re-reads the file and hands the running app the new
plan; an invalid file is refused in one line and the station runs on as it was.
"""

from __future__ import annotations

import difflib
import logging
import signal
import threading
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.line.options import SINK_OPTION_NAMES
from winclip.runtime.line.plan import CAMERA_SINK_KEYS, CameraPlan, LivePlan, PartPlan

log = logging.getLogger("winclip.inspect")

# table -> {key in the file: the command's parameter it sets}; a camera's keys are per camera
TABLES: dict[str, dict[str, str]] = {
    "": {"bundle": "bundle"},
    "engine": {"backend": "backend", "provider": "provider", "precision": "precision", "threads": "threads",
               "inference_precision": "inference_precision", "remeasure": "remeasure", "server": "engine_address",
               "temperature": "temperature", "max_pixels": "max_pixels", "no_cache": "no_cache"},
    # every sink's options, as the sink table has them, and the run's own outputs
    "outputs": {"out": "out", **{name: name for name in SINK_OPTION_NAMES}, "overlays": "overlays",
                "keep_days": "keep_days", "keep_gb": "keep_gb", "flush_timeout": "flush_timeout"},
    "page": {"serve": "serve", "host": "host", "operator_token_file": "operator_token_file"},
    "run": {"every": "every", "max_frames": "max_frames", "duration": "duration",
            "wait_for_source": "wait_for_source", "stall_timeout": "stall_timeout",
            "rtsp_transport": "rtsp_transport"},
}
CAMERA_KEYS: dict[str, str] = {
    "name": "", "source": "sources", "roi": "rois", "every": "every", "object": "object_name",
    "profile": "profile", "normal": "normal_dir", "shots": "shots", "threshold": "threshold",
    "pixel_threshold": "pixel_threshold", "overlays": "overlays",
    **{key: key for key in CAMERA_SINK_KEYS},  # a camera's own setting of a sink, as the sink's option names it
}
PATH_PARAMS = {"bundle", "out", "profile", "normal_dir", "operator_token_file"}  # relative to the file's folder
RESTART_ONLY = ("bundle", "engine", "page", "run")  # what a reload cannot change: the station restarts for it
RESTART_OUTPUTS = ("out", "keep_days", "keep_gb")  # the output folder and the overlays' retention, likewise


class StationError(WinclipError):
    """A station file that cannot run: one line per problem."""


@dataclass
class Station:
    """A checked station file: the command's values for the run, and each camera's own."""

    path: Path
    values: dict  # the command's parameter values for the whole run
    cameras: list[dict]  # per camera: its parameter values (name, sources, rois, object_name, ...)
    given: set = field(default_factory=set)  # the run's parameters the file set
    tables: dict = field(default_factory=dict)  # the file as read (for a reload's what-changed)


def _default(param: click.Parameter, ctx):
    """The parameter's value when the command line does not give it (its default, through its own checks)."""
    default = param.get_default(ctx)
    if not isinstance(default, (str, int, float, tuple, list, Path)):  # None, or click's marker for "no default"
        default = None
    return param.process_value(ctx, default)


def _expected(param: click.Parameter) -> tuple[tuple[type, ...], str]:
    """The TOML types a parameter takes, and their name for an error."""
    if getattr(param, "is_flag", False):
        return (bool,), "true or false"
    if getattr(param, "multiple", False):
        return (list, str), "a list of strings"
    kind = type(param.type).__name__
    if isinstance(param.type, click.types.FloatParamType) or kind == "Finite":
        return (int, float), "a number"
    if isinstance(param.type, click.types.IntParamType):
        return (int,), "a whole number"
    return (str,), "a string"


def _convert(where: str, key: str, value, param: click.Parameter, ctx, base: Path, problems: list):
    """The value as the command line would have taken it (the option's type, range and check), or None."""
    types, what = _expected(param)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        problems.append(f"{where}{key}: expected {what}, got {type(value).__name__} {value!r}")
        return None
    if getattr(param, "multiple", False) and isinstance(value, str):
        value = [value]
    if param.name in PATH_PARAMS:
        value = str(base / Path(value).expanduser())
    try:
        return param.process_value(ctx, value)
    except click.BadParameter as exc:
        problems.append(f"{where}{key}: {exc.format_message()}")
    except ValueError as exc:
        problems.append(f"{where}{key}: {first_line(exc)}")
    return None


def _unknown(where: str, keys, valid, problems: list) -> None:
    for key in keys:
        if key not in valid:
            near = difflib.get_close_matches(key, list(valid), n=1)
            problems.append(f"{where}unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                              f"; valid: {', '.join(sorted(valid))}"))


def read_station(path: Path, command: click.Command) -> Station:
    """Read and check a station file for `command` (winclip-inspect: its parameters check each value);
    StationError with one line per problem."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            tables = tomllib.load(handle)
    except FileNotFoundError:
        raise StationError(f"{path}: no such station file") from None
    except tomllib.TOMLDecodeError as exc:
        raise StationError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise StationError(f"{path}: not valid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise StationError(f"{path}: {exc.strerror or first_line(exc)}") from None
    params = {param.name: param for param in command.params}
    ctx = click.Context(command)
    base = path.resolve().parent
    problems: list[str] = []
    values = {name: _default(param, ctx) for name, param in params.items()}
    values.update(bundle=None, station=path, check=False)
    given: set[str] = set()
    valid_top = {*TABLES[""], *(t for t in TABLES if t), "camera"}
    _unknown("", tables, valid_top, problems)
    for table, keys in TABLES.items():
        section = {k: v for k, v in tables.items() if k in keys} if table == "" else tables.get(table, {})
        where = f"[{table}] " if table else ""
        if not isinstance(section, dict):
            problems.append(f"{table}: expected a table ([{table}]), got {type(section).__name__}")
            continue
        if table:
            _unknown(where, section, keys, problems)
        for key, value in section.items():
            if key in keys:
                values[keys[key]] = _convert(where, key, value, params[keys[key]], ctx, base, problems)
                given.add(keys[key])
    if values["bundle"] is None and "bundle" not in given:
        problems.append("bundle: missing (the engine bundle every camera shares, e.g. bundle = \"bundle\")")
    cameras = _cameras(tables.get("camera"), params, ctx, base, problems)
    if problems:
        raise StationError("\n".join(f"{path}: {p}" for p in problems))
    return Station(path, values, cameras, given, tables)


def _cameras(raw, params, ctx, base: Path, problems: list) -> list[dict]:
    if raw is None:
        problems.append("no [[camera]]: a station needs at least one camera")
        return []
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        problems.append("camera: expected [[camera]] tables")
        return []
    cameras, names = [], {}
    for number, table in enumerate(raw, 1):
        name = table.get("name")
        where = f"camera {name!r}: " if isinstance(name, str) and name else f"camera #{number}: "
        _unknown(where, table, CAMERA_KEYS, problems)
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\\0"):
            problems.append(f"{where}name: expected a name (letters, digits, '-', '_', ' '), got {name!r}")
        elif name in names:
            problems.append(f"{where}duplicate camera name (camera #{names[name]} has it too)")
        else:
            names[name] = number
        if "source" not in table:
            problems.append(f"{where}source: missing (a camera index, device, video file, stream URL or pipeline)")
        camera = {"name": name}
        for key, value in table.items():
            if key not in CAMERA_KEYS or key == "name":
                continue
            if key == "source":
                value = _source(where, value, base, problems)
                if value is None:
                    continue
            if key == "roi" and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            camera[CAMERA_KEYS[key]] = _convert(where, key, value, params[CAMERA_KEYS[key]], ctx, base, problems)
        cameras.append(camera)
    return cameras


def _source(where: str, value, base: Path, problems: list) -> str | None:
    """One camera's source as winclip-inspect --source takes it: a camera index, or a text; a file named
    relative to the station file's folder is found there."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a camera index
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}source: expected one camera index, device, video file, stream URL or pipeline, "
                        f"got {type(value).__name__} {value!r}")
        return None
    if "://" not in value and not Path(value).expanduser().is_absolute() and (base / value).exists():
        return str(base / value)
    return value


# --- the plan
def station_plan(station: Station, problems: list) -> LivePlan | None:
    """The LivePlan the station file says, with the command line's own checks; problems collected."""
    from winclip.runtime.line.options import output_plan, part_plan, run_limits, sink_values_of
    from winclip.runtime.line.sinks import SINKS
    from winclip.runtime.line.sources import SourceError, parse_source
    from winclip.runtime.line.sources.base import Roi

    values = station.values
    sink_values = sink_values_of(values)
    cameras = []
    for camera in station.cameras:
        where = f"camera {camera['name']!r}: "
        try:
            spec = parse_source(camera["sources"][0])
            if spec.kind == "images":
                raise SourceError(f"{spec.text}: a folder of images is scored with winclip-inspect BUNDLE --source "
                                  "FOLDER, not in a station")
            roi = camera.get("rois") or ()
            spec = replace(spec, name=camera["name"], every=camera.get("every"), roi_miss_stops=False,
                           roi=None if not roi or roi[0].strip().lower() in ("full", "-") else Roi.parse(roi[0]))
        except SourceError as exc:
            problems.append(where + first_line(exc))
            continue
        try:
            part = part_plan(camera)
        except click.UsageError as exc:
            problems.append(where + exc.format_message())
            continue
        sinks = {k: camera[k] for k in CAMERA_SINK_KEYS if camera.get(k) is not None}
        if "mqtt_topic" in sinks and values["mqtt"] is None:
            problems.append(f"{where}mqtt_topic needs a broker: [outputs] mqtt = \"HOST[:PORT]\"")
        elif sinks:
            for key, value in sinks.items():  # the sink's own check of the camera's setting
                try:
                    SINKS[CAMERA_SINK_KEYS[key]].plan({**sink_values, key: value}, values["out"])
                except click.ClickException as exc:
                    problems.append(f"{where}{key}: {_station_words(exc.format_message())}")
        cameras.append(CameraPlan(spec, part, camera.get("overlays"), sinks))
    local = [k for k, n in TABLES["engine"].items() if n in ("backend", "provider", "threads", "inference_precision",
                                                            "no_cache") and n in station.given]
    if values["engine_address"] is not None and local:
        problems.append(f"[engine] {local[0]} applies to an engine run here, not to [engine] server")
    overlaid = [c.name for c in cameras if c.overlays not in (None, "none")]
    if overlaid and values["out"] is None:
        problems.append(f"camera {overlaid[0]!r}: overlays saves into OUT/overlays: give [outputs] out")
    # the run's checks see the overlays some camera saves, even where the station's own default is none
    checked = {**values, "overlays": None} if overlaid and values["overlays"] == "none" else values
    try:
        outputs = output_plan(_Given(station.given), checked, sink_values,
                              elsewhere=bool(cameras) and all("webhook" in c.sinks for c in cameras))
        outputs = replace(outputs, overlays=values["overlays"] or outputs.overlays)
    except (click.UsageError, click.BadParameter, WinclipError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else first_line(exc)
        problems.append(_station_words(message))
        return None
    if problems:
        return None
    return LivePlan(tuple(cameras), run_limits(values), outputs, station=station.path)


class _Given:
    """What output_plan asks a click context (was this option given?), answered from the file's keys."""

    def __init__(self, given: set):
        self.given = given

    def get_parameter_source(self, name: str):
        return click.core.ParameterSource.COMMANDLINE if name in self.given else None


def _station_words(message: str) -> str:
    """An option check's words, in the file's key names (--mqtt-topic is [outputs] mqtt_topic)."""
    names = sorted(((name, f"[{table}] {key}" if table else key) for table, keys in TABLES.items()
                    for key, name in keys.items()), key=lambda pair: -len(pair[0]))  # --mqtt-topic before --mqtt
    for name, words in names:
        message = message.replace("--" + name.replace("_", "-"), words)
    return message


def check_fit(station: Station, plan: LivePlan, problems: list) -> list[str]:
    """Load the bundle's manifest and every profile (no engine is opened): objects that exist, profiles made for
    this bundle, and one engine for every profile. Lines of the plan for --check."""
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.contract import normalize_object_name
    from winclip.runtime.profiles.profile import LineProfile

    try:
        bundle = Bundle.load(station.values["bundle"])
    except (WinclipError, OSError) as exc:
        problems.append(f"bundle {station.values['bundle']}: {first_line(exc)}")
        return []
    engines = {engine.sha256: engine for engine in bundle.manifest.engines}
    shared: dict[str, str] = {}  # engine sha -> the first camera whose profile needs it
    lines = []
    for camera in plan.cameras:
        part, where = camera.part, f"camera {camera.name!r}: "
        objects = [normalize_object_name(o) for o in bundle.objects]
        if part.object_name is not None and normalize_object_name(part.object_name) not in objects:
            problems.append(f"{where}object {part.object_name!r} is not in the bundle (it has: "
                            f"{', '.join(bundle.objects)})")
        elif part.object_name is None and part.profile is None and len(bundle.objects) != 1:
            problems.append(f"{where}object: missing (the bundle holds {', '.join(bundle.objects)})")
        version = ""
        if part.profile is not None:
            try:
                profile = LineProfile.load(part.profile)
            except (WinclipError, OSError) as exc:
                problems.append(f"{where}profile {part.profile}: {first_line(exc)}")
                continue
            if part.object_name is not None and normalize_object_name(part.object_name) != profile.object_name:
                problems.append(f"{where}profile {part.profile} is for object {profile.object_name!r}, not "
                                f"{part.object_name!r}")
            sha = profile.memory.key.graph_sha256
            if sha not in engines:
                problems.append(f"{where}profile {part.profile} was made for another bundle (its engine "
                                f"{sha[:12]}... is not in {station.values['bundle']}): re-run winclip-calibrate")
            elif shared and sha not in shared:
                first = next(iter(shared.values()))
                problems.append(f"{where}profile {part.profile} was made with the {engines[sha].precision} engine; "
                                f"camera {first!r}'s with another: the cameras share one engine, so make every "
                                "profile with the same one")
            else:
                shared.setdefault(sha, camera.name)
                precision = station.values["precision"]
                if precision not in ("auto", engines[sha].precision):
                    problems.append(f"{where}profile {part.profile} runs only on the {engines[sha].precision} engine: "
                                    f"drop [engine] precision = {precision!r}")
            version = f" (profile object {profile.object_name!r}, {profile.memory.shots} shots)"
        roi = f", roi {','.join(map(str, camera.spec.roi.as_tuple()))}" if camera.spec.roi else ""
        sinks = "".join(f", {k} {v}" for k, v in camera.sinks.items())
        lines.append(f"camera {camera.name}: {camera.spec.text}{roi}, every {camera.spec.every or plan.limits.every}, "
                     f"{part.describe()}{version}, overlays {plan.overlay_mode(camera)}{sinks}")
    engine = station.values["engine_address"] or (f"{station.values['backend']} backend, precision "
                                                  f"{station.values['precision']}")
    lines.insert(0, f"bundle {station.values['bundle']} ({', '.join(bundle.objects)}); one engine: {engine}"
                    + (f", profiles' engine {engines[next(iter(shared))].file}" if shared else ""))
    return lines


def load_station(path: Path, command: click.Command) -> tuple[Station, LivePlan, list[str]]:
    """Read, check and plan a station file for `command`: StationError with one line per problem."""
    station = read_station(path, command)
    problems: list[str] = []
    plan = station_plan(station, problems)
    lines = check_fit(station, plan, problems) if plan is not None else []
    if problems:
        raise StationError("\n".join(f"{path}: {p}" for p in problems))
    return station, plan, lines


def _sink_lines(plan: LivePlan) -> list[str]:
    out = plan.outputs
    lines = [f"sinks: {', '.join(out.sinks) or 'none'}" + (f"; output folder {out.out}" if out.out else "")]
    if out.serve is not None:
        lines.append(f"page: http://{out.host}:{out.serve}/" + ("" if out.token is not None else " (read-only)"))
    return lines


# --- the command
def run_station(ctx: click.Context, bundle, values: dict) -> None:
    """winclip-inspect --station FILE [--check]: nothing else on the command line (the file says it)."""
    from winclip.runtime.line.options import given

    extra = [name for name in values if name not in ("station", "check") and given(ctx, name)]
    if bundle is not None or extra:
        what = "BUNDLE" if bundle is not None else "--" + extra[0].replace("_", "-")
        raise click.UsageError(f"{what}: with --station the file says it (docs/inspect.md, 'A station')")
    try:
        station, plan, lines = load_station(values["station"], ctx.command)
    except StationError as exc:
        for line in str(exc).splitlines():
            click.echo(f"Error: {line}", err=True)
        ctx.exit(1)
    if values["check"]:
        for line in lines + _sink_lines(plan):
            click.echo(line)
        click.echo(f"{station.path}: ok, {len(plan.cameras)} cameras, {len(plan.parts)} parts")
        return
    _run(station, plan, ctx.command)


def _run(station: Station, plan: LivePlan, command: click.Command) -> None:
    from winclip.runtime.line.app import run_live
    from winclip.runtime.line.options import engine_plan, load_engine, output_lock

    values = station.values
    if values["rtsp_transport"] is not None:
        from winclip.runtime.line.sources.stream import set_rtsp_transport

        set_rtsp_transport(values["rtsp_transport"])
    options = engine_plan(values, wait=values["wait_for_source"])
    # the engine every camera shares: the one the profiles were made with, when any camera has a profile
    first = next((part for part in plan.parts if part.profile is not None), plan.parts[0])
    engine = load_engine(values["bundle"], PartPlan(first.object_name, first.profile), options,
                         values["temperature"], build_memory=False)
    with output_lock(values["out"]), Reloader(station, command) as reloader:
        run_live(engine, plan, on_open=reloader.attach)


class Reloader:
    """SIGHUP (or the page's reload) re-reads the station file off the loop thread and hands the app the new
    plan; a file that does not check, or one that changes what only a restart can, is refused in one line."""

    def __init__(self, station: Station, command: click.Command):
        self.station, self.command = station, command
        self.app = None
        self.wanted = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="station reload", daemon=True)
        self._previous = None

    def __enter__(self) -> "Reloader":
        if hasattr(signal, "SIGHUP"):
            self._previous = signal.signal(signal.SIGHUP, lambda signum, frame: self.wanted.set())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.wanted.set()
        self._thread.join(timeout=5.0)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)

    def attach(self, app) -> None:
        self.app = app
        if app.server is not None:
            app.server.reload = self.request

    def request(self, who: str = "") -> str:
        """Ask for a reload (the page's action): it happens off the caller's thread."""
        self.wanted.set()
        return f"re-reading {self.station.path}"

    def _watch(self) -> None:
        while True:
            self.wanted.wait()
            if self.done.is_set():
                return
            if self.app is None:  # a SIGHUP before the run is open: it is done once the run is
                time.sleep(0.1)
                continue
            self.wanted.clear()
            try:
                self.reload()
            except Exception as exc:  # anything unforeseen: refused in one line, the thread lives on
                self.app.refuse_reload(f"{type(exc).__name__}: {first_line(exc)}", self.station.path)

    def reload(self) -> None:
        try:
            station, plan, _ = load_station(self.station.path, self.command)
            changed = [t for t in RESTART_ONLY if (self.station.tables.get(t) if t != "bundle" else
                                                   self.station.values["bundle"]) !=
                       (station.tables.get(t) if t != "bundle" else station.values["bundle"])]
            changed += [f"[outputs] {key}" for key in RESTART_OUTPUTS
                        if self.station.values[key] != station.values[key]]
            if changed:
                raise StationError(f"{self.station.path}: {', '.join(changed)} changed: these need a restart "
                                   "(cameras, thresholds, profiles, sinks and ROIs reload)")
        except StationError as exc:
            self.app.refuse_reload(str(exc).replace("\n", "; "), self.station.path)
            return
        # the page's token and server stay the running ones (a restart changes them)
        plan = replace(plan, outputs=replace(plan.outputs, token=self.app.plan.outputs.token))
        self.station = station
        self.app.reload(plan)
