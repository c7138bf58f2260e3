"""Where the runtime's resident memory goes, step by step, and what a whole run peaks at.

    python -m winclip.benchmarks.bench_memory BUNDLE [--precision int8] [--shots 4] [--frames 8]
        [--rounds 3] [--baseline-tree DIR] [--json OUT.json] [--md OUT.md]

Every measurement runs in a fresh child process, so each peak is its own:

- trace: the steps of a few-shot run in one process (Bundle.load, detector setup, the first
  zero-shot frame, build_memory of K normals, the first K-shot frame, steady state) and the parts
  inside them (reading and hashing the engine, the external-data check, each
  InferenceSession, the self-check, each engine call, the memory arrays). At every mark it reads
  VmRSS and the peak since the previous mark (VmHWM, reset by writing 5 to
  /proc/self/clear_refs where the kernel allows it; else the peak since the start), and Python's
  own share from tracemalloc (numpy arrays and bytes objects: what onnxruntime allocates is
  native and shows in RSS only). Run once with an empty cache (the first start on a box: the
  optimised graph is written and the self-check runs) and once with a warm one.
- bare: a plain onnxruntime.InferenceSession on the engine file and one frame: the floor.
- inspect: the whole `winclip-inspect --normal DIR --shots K` command on a folder of frames, its
  peak (the child's ru_maxrss) and per-frame latency from its event log, in `--rounds`
  interleaved rounds; with --baseline-tree, the same command run from another checkout of the
  project (say, the commit before a change) in the same rounds, so that latency is compared
  within one run on one machine.

Frames are real images: --images DIR and --normal DIR, or textiles and solar cells from the dev
extra's data sets.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import click

from winclip.benchmarks.results import write_results
from winclip.benchmarks.rss import reset_peak, status as proc_status
from winclip.runtime.command import CONTEXT

MIB = 1 << 20
# (module, attribute, label): the parts of a step the trace marks, where the code has them
PROBES = (
    ("winclip.runtime.bundle", "Bundle.read_engine", "read + hash the engine bytes"),
    ("winclip.runtime.bundle", "stream_checked", "stream + hash the engine (copy)"),
    ("winclip.runtime.backends.onnxruntime", "external_tensors", "external-data check"),
    ("winclip.runtime.backends.onnxruntime", "external_tensors_in_file", "external-data check"),
    ("winclip.runtime.backends.onnxruntime", "require_inline_weights", "external-data check"),
    ("winclip.runtime.backends.onnxruntime", "_write_cache", "write the optimised-graph cache"),
    ("winclip.runtime.backends.onnxruntime", "release_free_heap", "return freed heap (malloc_trim)"),
    ("winclip.runtime.detector", "Detector._self_check", "self-check frame"),
    ("winclip.runtime.detector", "Detector.embed", "preprocess + engine call"),
    ("winclip.runtime.memory", "FewShotMemory.from_outputs", "memory arrays from outputs"),
)
SESSION_LABEL = "onnxruntime.InferenceSession"


class MemoryTrace:
    """Marks on a timeline: RSS now, the peak since the previous mark and Python's share, per labelled part."""

    def __init__(self, python: bool = True):
        self.python = python
        if python:
            tracemalloc.start()
        self.resettable = reset_peak()
        self.segments: list[dict] = []
        self.steps: list[dict] = []
        self._labels: list[str] = []
        self._step: str = "start"
        self._snapshot = None

    def mark(self, label: str) -> None:
        """Close the segment since the previous mark under `label`; start the next one."""
        status = proc_status()
        py_now, py_peak = tracemalloc.get_traced_memory() if self.python else (0, 0)
        self.segments.append({"step": self._step, "part": label, "rss_mib": status["VmRSS"],
                              "peak_mib": status["VmHWM"], "python_mib": py_now / MIB,
                              "python_peak_mib": py_peak / MIB})
        if self.resettable:
            reset_peak()
        if self.python:
            tracemalloc.reset_peak()

    @contextmanager
    def step(self, name: str):
        """A step of the run: its segments, its peak, RSS after it and the Python allocations it left behind."""
        self.mark(self._labels[-1] if self._labels else "(between steps)")
        self._step = name
        before = tracemalloc.take_snapshot() if self.python else None
        self._labels.append("(rest of the step)")
        try:
            yield
        finally:
            self.mark(self._labels.pop())
            held = []
            if before is not None:
                after = tracemalloc.take_snapshot()
                for stat in after.compare_to(before, "lineno")[:3]:
                    if stat.size_diff > MIB:
                        frame = stat.traceback[0]
                        held.append(f"{_short(frame.filename)}:{frame.lineno} {stat.size_diff / MIB:+.1f} MiB")
            mine = [s for s in self.segments if s["step"] == name]
            self.steps.append({"step": name, "peak_mib": max(s["peak_mib"] for s in mine),
                               "rss_after_mib": mine[-1]["rss_mib"], "python_after_mib": mine[-1]["python_mib"],
                               "python_peak_mib": max(s["python_peak_mib"] for s in mine), "held": held})
            self._step = "(between steps)"

    @contextmanager
    def part(self, label: str):
        """A labelled part inside a step (nested parts split their parent's time)."""
        self.mark(self._labels[-1] if self._labels else "(between steps)")
        self._labels.append(label)
        try:
            yield
        finally:
            self.mark(self._labels.pop())

    def result(self) -> dict:
        parts = []
        for step in self.steps:
            labels: dict[str, dict] = {}
            for s in self.segments:
                if s["step"] != step["step"]:
                    continue
                row = labels.setdefault(s["part"], {"step": step["step"], "part": s["part"], "segments": 0,
                                                    "peak_mib": 0.0, "python_peak_mib": 0.0})
                row["segments"] += 1
                row["peak_mib"] = max(row["peak_mib"], s["peak_mib"])
                row["python_peak_mib"] = max(row["python_peak_mib"], s["python_peak_mib"])
            parts.extend(labels.values())
        return {"peak_kind": "since the previous mark" if self.resettable else "since the process started",
                "steps": self.steps, "parts": parts, "run_peak_mib": proc_status()["VmHWM"] if not self.resettable
                else max(s["peak_mib"] for s in self.segments)}


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for root in ("winclip", "site-packages"):
        if root in parts:
            return "/".join(parts[parts.index(root) + 1:])
    return Path(filename).name


def install_probes(trace: MemoryTrace) -> list[str]:
    """Wrap the functions of PROBES (those that exist here) and onnxruntime.InferenceSession in trace parts."""
    import onnxruntime as ort

    installed = []
    for module_name, attribute, label in PROBES:
        try:
            owner = import_module(module_name)
        except ImportError:
            continue
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        raw = getattr(owner, "__dict__", {}).get(name) if owner is not None else None
        if raw is None:
            continue
        kind = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
        fn = raw.__func__ if kind else raw

        def traced(*args, _fn=fn, _label=label, **kwargs):
            with trace.part(_label):
                return _fn(*args, **kwargs)

        functools.update_wrapper(traced, fn)
        setattr(owner, name, kind(traced) if kind else traced)
        installed.append(attribute)

    class TracedSession(ort.InferenceSession):
        def __init__(self, *args, **kwargs):
            with trace.part(SESSION_LABEL):
                super().__init__(*args, **kwargs)

    ort.InferenceSession = TracedSession
    installed.append(SESSION_LABEL)
    return installed


# --- what the children do
def child_trace(cfg: dict) -> dict:
    """The steps of a K-shot run in this process, traced."""
    from winclip.runtime.backends import BackendOptions
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.detector import Detector
    from winclip.runtime.images import read_image

    images = [read_image(p) for p in cfg["images"]]
    normals = [read_image(p) for p in cfg["normals"][:cfg["shots"]]]
    trace = MemoryTrace(python=cfg.get("tracemalloc", True))
    probes = install_probes(trace)
    with trace.step("Bundle.load"):
        bundle = Bundle.load(cfg["bundle"])
    with trace.step("detector setup (session, self-check)"):
        detector = Detector(bundle, object_name=cfg.get("object") or bundle.objects[0],
                            options=BackendOptions(device="cpu", precision=cfg["precision"], threads=cfg.get("threads"),
                                                   cache=cfg["cache"] != "off", cache_dir=cfg.get("cache_dir")))
    with trace.step("first zero-shot frame"):
        detector(images[0])
    if normals:
        with trace.step(f"build_memory of {len(normals)} normals"):
            detector.build_memory(normals)
        with trace.step(f"first {len(normals)}-shot frame"):
            detector(images[1 % len(images)])
    with trace.step(f"steady state ({cfg['frames']} frames)"):
        for i in range(cfg["frames"]):
            detector(images[(2 + i) % len(images)])
    return {**trace.result(), "probes": probes, "engine": detector.engine.file}


def child_bare(cfg: dict) -> dict:
    """A plain InferenceSession on the engine file, and one blank frame through it."""
    import numpy as np
    import onnxruntime as ort

    from winclip.runtime.bundle import Bundle

    bundle = Bundle.load(cfg["bundle"])
    engine = bundle.manifest.engine(cfg["precision"])
    options = ort.SessionOptions()
    if cfg.get("threads"):
        options.intra_op_num_threads = cfg["threads"]
    before = proc_status()["VmRSS"]
    session = ort.InferenceSession(str(bundle.root / engine.file), options, providers=["CPUExecutionProvider"])
    after_session = proc_status()
    h, w = bundle.manifest.preprocess.input_size
    session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, h, w), np.float32)})
    return {"rss_before_mib": before, "session_peak_mib": after_session["VmHWM"],
            "session_rss_mib": after_session["VmRSS"], "frame_peak_mib": proc_status()["VmHWM"]}


# ONNX Runtime session settings compared by --parts settings: memory pattern, pre-packed weights,
# CPU arena, the arena shrunk after every run, and whether the heap onnxruntime freed while making
# the session is returned (heap.py)
_BASE = {"pattern": True, "prepack": True, "arena": True, "trim": False, "shrink": False}
SETTINGS = {
    "onnxruntime's defaults": _BASE,
    "no memory pattern": {**_BASE, "pattern": False},
    "no memory pattern, heap returned": {**_BASE, "pattern": False, "trim": True},
    "no memory pattern, no pre-packing, heap returned": {**_BASE, "pattern": False, "prepack": False, "trim": True},
    "no memory pattern, no arena, heap returned": {**_BASE, "pattern": False, "arena": False, "trim": True},
    # the pattern's speed without its block beside the arena's: the first run's arena chunks go back after it
    "memory pattern, arena shrunk after each run, heap returned": {**_BASE, "shrink": True, "trim": True},
    "memory pattern, no arena, heap returned": {**_BASE, "arena": False, "trim": True},
}


def runtime_setting(precision: str) -> str | None:
    """Which row of SETTINGS the runtime's own session options are, for an engine of this precision."""
    from winclip.runtime.backends.onnxruntime import session_options

    options = session_options(None, precision)
    try:
        prepack = options.get_session_config_entry("session.disable_prepacking") != "1"
    except RuntimeError:  # not set
        prepack = True
    mine = {"pattern": options.enable_mem_pattern, "arena": options.enable_cpu_mem_arena, "trim": True,
            "prepack": prepack, "shrink": False}
    return next((name for name, s in SETTINGS.items() if s == mine), None)


def _settings_session(path: str, setting: dict, threads: int | None):
    import onnxruntime as ort

    from winclip.runtime.heap import release_free_heap

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = setting["pattern"]
    options.enable_cpu_mem_arena = setting["arena"]
    if not setting["prepack"]:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    if setting["trim"]:
        release_free_heap()
    return session


def _run_options(setting: dict):
    import onnxruntime as ort

    options = ort.RunOptions()
    if setting["shrink"]:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _real_batch(cfg: dict):
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.images import read_image
    from winclip.runtime.preprocess import Preprocessor

    bundle = Bundle.load(cfg["bundle"])
    return bundle, Preprocessor(bundle.manifest.preprocess)([read_image(cfg["images"][0])])


def child_setting_memory(cfg: dict) -> dict:
    """One session with one SETTINGS row over the engine file: its start-up peak, then three frames."""
    bundle, batch = _real_batch(cfg)
    reset_peak()
    setting = SETTINGS[cfg["setting"]]
    session = _settings_session(str(bundle.root / bundle.manifest.engine(cfg["precision"]).file), setting,
                                cfg.get("threads"))
    run_options = _run_options(setting)
    made = proc_status()
    reset_peak()
    for _ in range(3):
        session.run(None, {session.get_inputs()[0].name: batch}, run_options)
    ran = proc_status()
    return {"session_peak_mib": made["VmHWM"], "session_rss_mib": made["VmRSS"], "frames_peak_mib": ran["VmHWM"],
            "frames_rss_mib": ran["VmRSS"]}


def child_setting_latency(cfg: dict) -> dict:
    """Every SETTINGS row's session in this one process, a frame each in turn, round after round (the order
    reversed every other round): per-frame wall time of each, under the same load."""
    import time

    bundle, batch = _real_batch(cfg)
    path = str(bundle.root / bundle.manifest.engine(cfg["precision"]).file)
    sessions = {name: _settings_session(path, setting, cfg.get("threads")) for name, setting in SETTINGS.items()}
    feeds = {name: {s.get_inputs()[0].name: batch} for name, s in sessions.items()}
    run_options = {name: _run_options(setting) for name, setting in SETTINGS.items()}
    for name, session in sessions.items():
        session.run(None, feeds[name], run_options[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(cfg["setting_rounds"]):
        for name in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            t0 = time.perf_counter()
            sessions[name].run(None, feeds[name], run_options[name])
            times[name].append(1000 * (time.perf_counter() - t0))
    return {"frame_ms": times}


CHILDREN = {"trace": child_trace, "bare": child_bare, "setting_memory": child_setting_memory,
            "setting_latency": child_setting_latency}


def run_measured(cmd: list[str], env: dict, work: Path) -> dict:
    """Run a command; its exit code, output and peak resident memory (its own ru_maxrss, through wait4)."""
    out, err = work / "child.out", work / "child.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err.read_text()
    return {"returncode": proc.returncode, "stdout": out.read_text(), "stderr": stderr,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def _child(kind: str, cfg: dict, env: dict, work: Path) -> dict:
    path = work / f"{kind}.json"
    path.write_text(json.dumps(cfg))
    r = run_measured([sys.executable, "-m", "winclip.benchmarks.bench_memory", "--child", kind, str(path)], env, work)
    if r["returncode"] != 0:
        from winclip.benchmarks.bench_cli import last_error  # the parent's side only: children measure their imports

        raise click.ClickException(f"the {kind} child failed: {last_error(r['stderr'], r['returncode'])}")
    return {**json.loads(r["stdout"].strip().splitlines()[-1]), "process_peak_mib": r["peak_rss_mib"]}


def _env(cache_home: Path, tree: Path | None = None) -> dict:
    """The children's environment: their own cache folder; with a tree, the project imported from there
    (all but this benchmark's own code, which measures it)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    if tree is not None:
        shim = cache_home / "shim" / "winclip"
        shim.mkdir(parents=True, exist_ok=True)
        for room in ("runtime", "calibration", "export", "benchmarks"):
            link = shim / room
            if not link.exists():
                link.symlink_to(Path(__file__).resolve().parent if room == "benchmarks" else Path(tree).resolve() / room)
        env["PYTHONPATH"] = os.pathsep.join([str(shim.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def inspect_run(cfg: dict, env: dict, work: Path, frames_dir: Path, normals_dir: Path) -> dict:
    """One whole `winclip-inspect` folder run with a K-shot memory: peak RSS and per-frame latency."""
    out = work / "inspect-out"
    cmd = [sys.executable, "-m", "winclip.runtime.line.cli", cfg["bundle"], "--source", str(frames_dir),
           "--out", str(out), "--force", "--provider", "cpu", "--precision", cfg["precision"]]
    if cfg["shots"]:
        cmd += ["--normal", str(normals_dir), "--shots", str(cfg["shots"])]
    if cfg.get("threads"):
        cmd += ["--threads", str(cfg["threads"])]
    r = run_measured(cmd, env, work)
    if r["returncode"] != 0:
        from winclip.benchmarks.bench_cli import last_error

        return {"error": last_error(r["stderr"], r["returncode"])}
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    totals = [e["latency_ms"]["total"] for e in events if "latency_ms" in e]
    engine = [e["latency_ms"]["engine"] for e in events if "latency_ms" in e]
    return {"peak_rss_mib": r["peak_rss_mib"], "frames": len(totals), "frame_ms": totals[1:] or totals,
            "engine_ms": engine[1:] or engine}


def _frames(images: Path | None, normal: Path | None, count: int, work: Path) -> tuple[list[Path], list[Path]]:
    from winclip.benchmarks.bench_cli import default_frames
    from winclip.runtime.images import list_images

    if images is not None:
        frame_paths = list_images(images)[0]
        normal_paths = list_images(normal)[0] if normal else frame_paths
    else:
        frame_paths, normal_paths = default_frames(work / "defaults")
        if normal is not None:
            normal_paths = list_images(normal)[0]
    if not frame_paths:
        raise click.ClickException("no frames to score: pass --images DIR")
    return [frame_paths[i % len(frame_paths)] for i in range(count)], normal_paths


def _link_folder(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        (folder / f"{i:04d}{Path(p).suffix}").symlink_to(Path(p).resolve())
    return folder


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"machine: {m.get('cpu', '')} ({m['machine']}, {m['cores']} cores, {' '.join(m.get('cpu_features', []))}); "
             f"onnxruntime {m['onnxruntime']}; engine {result['engine']} ({result['engine_mib']:.0f} MiB); "
             f"{result['shots']}-shot, {result['frames']} frames; load average at the start "
             f"{result.get('load_average', float('nan')):.2f}" + (f"; {result['note']}" if result.get("note") else "")]
    bare = result.get("bare")
    if bare:
        lines.append(f"\nbare onnxruntime.InferenceSession on the engine file: peak {bare['session_peak_mib']:.0f} MiB "
                     f"after the session, {bare['frame_peak_mib']:.0f} MiB after one frame")
    for name, trace in result.get("traces", {}).items():
        lines += ["", f"### trace, {name} cache (peak {trace['peak_kind']})", "",
                  "| step | peak MiB | RSS after MiB | Python peak MiB | Python after MiB | held by Python after the step |",
                  "|---|---|---|---|---|---|"]
        for s in trace["steps"]:
            lines.append(f"| {s['step']} | {s['peak_mib']:.0f} | {s['rss_after_mib']:.0f} | {s['python_peak_mib']:.0f} | "
                         f"{s['python_after_mib']:.0f} | {'; '.join(s['held']) or '-'} |")
        lines.append(f"| **whole run** | **{trace['run_peak_mib']:.0f}** | | | | |")
        lines += ["", "| step | part | times | peak MiB | Python peak MiB |", "|---|---|---|---|---|"]
        for p in trace["parts"]:
            lines.append(f"| {p['step']} | {p['part']} | {p['segments']} | {p['peak_mib']:.0f} | {p['python_peak_mib']:.0f} |")
    settings = result.get("settings")
    if settings:
        lines += ["", "### ONNX Runtime session settings (each row's memory in a process of its own; latency of all "
                  "rows in one process, a frame each in turn"
                  ": compare latency within this table only)", "",
                  "| setting | session peak MiB | RSS after session | peak over 3 frames | RSS after | "
                  "frame p50 ms | x defaults (per round, median) |", "|---|---|---|---|---|---|---|"]
        for name, row in settings["rows"].items():
            mark = " (the runtime's)" if name == settings["runtime"] else ""
            lines.append(f"| {name}{mark} | {row['session_peak_mib']:.0f} | {row['session_rss_mib']:.0f} | "
                         f"{row['frames_peak_mib']:.0f} | {row['frames_rss_mib']:.0f} | {row['frame_p50_ms']:.0f} | "
                         f"{row['vs_defaults']:.3f} |")
    inspect = result.get("inspect")
    if inspect:
        lines += ["", f"### whole `winclip-inspect` runs, {result['rounds']} interleaved rounds"
                  " (compare latency within this table only)", "",
                  "| code | peak RSS MiB (max over rounds) | per-round peaks | frame p50 ms | engine p50 ms |",
                  "|---|---|---|---|---|"]
        for name, row in inspect.items():
            if "error" in row:
                lines.append(f"| {name} | error: {row['error']} | | | |")
                continue
            lines.append(f"| {name} | {row['peak_rss_mib']:.0f} | {', '.join(f'{p:.0f}' for p in row['peaks'])} | "
                         f"{row['frame_p50_ms']:.0f} | {row['engine_p50_ms']:.0f} |")
    return "\n".join(lines)


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", default="int8", type=click.Choice(("fp32", "int8", "fp16")), help="Engine to run.")
@click.option("--shots", type=click.IntRange(min=0), default=4, help="Normal frames in the few-shot memory (0: zero-shot).")
@click.option("--frames", type=click.IntRange(min=2), default=8, help="Frames scored after the memory is built.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads. [default: all cores]")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of real frames. [default: textiles and solar cells from the dev extra's data sets]")
@click.option("--normal", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of normal frames for the memory. [default: the data sets' normal textiles, or --images]")
@click.option("--object", "object_name", default=None, help="Object to score. [default: the bundle's first]")
@click.option("--parts", type=click.Choice(("trace", "bare", "settings", "inspect")), multiple=True,
              default=("trace", "bare", "settings", "inspect"), help="What to measure; repeatable.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, help="Interleaved rounds of whole inspect runs.")
@click.option("--baseline-tree", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Another checkout of the project (e.g. `git worktree add /tmp/base HEAD~3`): its winclip-inspect "
                   "runs in the same rounds.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the results here.")
@click.option("--md", "md_out", type=click.Path(path_type=Path), default=None, help="Write the tables here.")
@click.option("--note", default="", help="Recorded with the results (say 'under load' on a shared box).")
def main(bundle, **values):
    """Trace BUNDLE's resident memory per step and measure whole winclip-inspect runs' peaks."""
    from winclip.benchmarks.bench_cli import machine
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.errors import BundleError

    plan = MemoryPlan(**values)
    try:
        b = Bundle.load(bundle)
        engine = b.engine(plan.precision)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    work = Path(tempfile.mkdtemp(prefix="winclip-bench-memory-"))
    try:
        frame_paths, normal_paths = _frames(plan.images, plan.normal, plan.frames, work)
        if plan.shots > len(normal_paths):
            raise click.ClickException(f"--shots {plan.shots} needs that many normal frames; {len(normal_paths)} found")
        cfg = {"bundle": str(bundle.resolve()), "precision": plan.precision, "shots": plan.shots,
               "frames": plan.frames, "threads": plan.threads, "object": plan.object_name,
               "images": [str(p) for p in frame_paths], "normals": [str(p) for p in normal_paths[:plan.shots]]}
        result = {"machine": machine(), "engine": engine.file,
                  "engine_mib": sum((bundle / ref.file).stat().st_size for ref in engine.files()) / MIB,
                  "precision": plan.precision, "shots": plan.shots, "frames": plan.frames, "rounds": plan.rounds,
                  "load_average": os.getloadavg()[0], "note": plan.note}
        if "bare" in plan.parts:
            click.echo("bare session", err=True)
            result["bare"] = _child("bare", cfg, _env(work / "cache-bare"), work)
        if "settings" in plan.parts:
            result["settings"] = _measure_settings(cfg, plan, work)
        if "trace" in plan.parts:
            result["traces"] = _measure_traces(cfg, plan.baseline_tree, work)
        if "inspect" in plan.parts:
            frames_dir = _link_folder(frame_paths, work / "frames")
            normals_dir = _link_folder(normal_paths[:max(plan.shots, 1)], work / "normals")
            result["inspect"] = _measure_inspect(cfg, plan, work, frames_dir, normals_dir)
        result["load_average_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(result)
    click.echo(table)
    write_results(result, table, plan.json_out, plan.md_out)


@dataclass(frozen=True)
class MemoryPlan:
    """What one bench_memory run measures and where it writes: each field is the command's option of that name."""

    precision: str  # the engine to run
    shots: int  # normal frames in the few-shot memory (0: zero-shot)
    frames: int  # frames scored after the memory is built
    threads: int | None  # intra-op threads; None: all cores
    images: Path | None  # real frames; None: the dev extra's data sets
    normal: Path | None  # normal frames for the memory; None: the data sets' normals, or images
    object_name: str | None  # None: the bundle's first object
    parts: tuple[str, ...]  # of trace, bare, settings, inspect
    rounds: int  # interleaved rounds of whole inspect runs
    baseline_tree: Path | None  # another checkout whose winclip-inspect runs in the same rounds
    json_out: Path | None  # the results, as JSON
    md_out: Path | None  # the tables, as markdown
    note: str  # recorded with the results


def _measure_settings(cfg: dict, plan: MemoryPlan, work: Path) -> dict:
    """Each ONNX Runtime session setting's memory in a process of its own, then all their latencies in one."""
    settings = {"runtime": runtime_setting(plan.precision), "rows": {}}
    for name in SETTINGS:
        click.echo(f"settings, memory: {name}", err=True)
        settings["rows"][name] = _child("setting_memory", {**cfg, "setting": name}, _env(work / "cache-settings"),
                                        work)
    click.echo(f"settings, latency: {len(SETTINGS)} sessions in one process, {plan.rounds * plan.frames // 2} rounds",
               err=True)
    lat = _child("setting_latency", {**cfg, "setting_rounds": max(3, plan.rounds * plan.frames // 2)},
                 _env(work / "cache-settings"), work)["frame_ms"]
    first = next(iter(SETTINGS))
    for name, ms in lat.items():
        settings["rows"][name].update(frame_p50_ms=statistics.median(ms), frame_ms=ms,
                                      vs_defaults=statistics.median(a / b for a, b in zip(ms, lat[first])))
    return settings


def _measure_traces(cfg: dict, baseline_tree: Path | None, work: Path) -> dict:
    """The step-by-step trace of this tree (and the baseline's), with an empty cache and then a warm one."""
    traces = {}
    trees = {"": None, **({f"baseline ({baseline_tree.name}), ": baseline_tree} if baseline_tree else {})}
    for i, (label, tree) in enumerate(trees.items()):
        env = _env(work / f"cache-trace-{i}", tree)
        for name in ("empty", "warm"):  # the first start on a box, then every later one
            click.echo(f"trace, {label}{name} cache", err=True)
            traces[label + name] = _child("trace", {**cfg, "cache": "on", "cache_dir": None}, env, work)
    return traces


def _measure_inspect(cfg: dict, plan: MemoryPlan, work: Path, frames_dir: Path, normals_dir: Path) -> dict:
    """Whole winclip-inspect runs of this tree (and the baseline's) in interleaved rounds: peaks and latency."""
    baseline_tree = plan.baseline_tree
    trees = {"this tree": None, **({f"baseline ({baseline_tree.name})": baseline_tree} if baseline_tree else {})}
    envs = {name: _env(work / f"cache-{i}", tree) for i, (name, tree) in enumerate(trees.items())}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for name, env in envs.items():  # a first run per tree fills its cache; not counted
        click.echo(f"inspect warm-up, {name}", err=True)
        inspect_run(cfg, env, work, frames_dir, normals_dir)
    for r in range(plan.rounds):
        for name, env in envs.items():
            click.echo(f"inspect round {r + 1}/{plan.rounds}, {name}", err=True)
            runs[name].append(inspect_run(cfg, env, work, frames_dir, normals_dir))
    out = {}
    for name, rs in runs.items():
        bad = next((x for x in rs if "error" in x), None)
        if bad:
            out[name] = bad
            continue
        out[name] = {
            "peaks": [x["peak_rss_mib"] for x in rs], "peak_rss_mib": max(x["peak_rss_mib"] for x in rs),
            "frame_p50_ms": statistics.median(v for x in rs for v in x["frame_ms"]),
            "engine_p50_ms": statistics.median(v for x in rs for v in x["engine_ms"]),
            "round_p50_ms": [statistics.median(x["frame_ms"]) for x in rs]}
    return out

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(Path(sys.argv[3]).read_text()))))
        sys.exit(0)
    sys.exit(main())
