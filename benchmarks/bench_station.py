"""One station process for N cameras against N single-camera processes: peak memory and frames/s.

    python -m winclip.benchmarks.bench_station BUNDLE [--precision int8] [--threads T] [--frames 60]
        [--rounds 3] [--object NAME | --profile DIR ...] [--video FILE ...] [--json OUT.json] [--md OUT.md]

Issue 28's question: does one `winclip-inspect --station` process, sharing one engine session and batching
the frames of all its cameras into one engine call, hold less memory and score at least as many frames per
second as one `winclip-inspect BUNDLE --source VIDEO` process per camera? In `--rounds` interleaved rounds
(the order swapped every other round, so that neither arm always runs first) on one machine:

- station: one `winclip-inspect --station` process, a `[[camera]]` per video;
- singles: one `winclip-inspect BUNDLE --source VIDEO` process per video, all started together;

with the same engine options (backend, provider, precision, threads), the same part (zero-shot with --object,
or the line profile of --profile) and no overlays. Each run goes to the end of its videos and writes its
events to a file. Per run it records peak resident memory (each process's own ru_maxrss, through wait4, and
the highest sum of the processes' VmRSS sampled together from /proc while they run), the frames scored, the
throughput (frames scored / seconds from the first frame read to the last frame scored, from the events:
the first frame event's read time, the last source_ended event, which a video reader writes once its last
frame is scored), the whole command's wall time (process start to the last exit: start-up included), and
the per-frame latency (total and engine) medians from the events.

Reported: medians over rounds, and per-round ratios (their median): station peak / one single process's peak
(the goal: at most 1.3), station peak / the singles' summed peaks, station frames/s / the singles' frames/s
(the goal: at least 1.0). The singles' frames/s counts all their frames over the span from the first
process's first frame to the last process's last: with short videos their staggered start-up is part of
that span, so measure with enough frames per camera that it is not (60 or more on ViT-B-16+). A first,
uncounted single-camera run fills the optimised-graph cache that every measured run then shares.

Videos: three MJPG .avi files of --frames frames each, from real images of the dev extra's data sets (good
textiles, textiles with local defects, solar cells; 250 px colour and 300 px gray), or your own with --video
(one camera per file; run-length as recorded). On a shared machine the absolute figures are noisy: say so
with --note; the ratios compare arms within one round.

The measurement issue 28 asks for (ViT-B-16+, int8 engine, a quiet machine, threads at the default):

    python -m winclip.benchmarks.bench_station bundles/vit-b-16-plus --precision int8 --frames 120 \\
        --rounds 3 --object bottle --json benchmarks/station-$(uname -m)-$(date +%F).json \\
        --md benchmarks/station-$(uname -m)-$(date +%F).md
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click

from winclip.benchmarks.results import write_results
from winclip.runtime.command import CONTEXT, Command

MIB = 1 << 20
SAMPLE_S = 0.02  # how often the VmRSS of running children is read
GOAL_MEMORY = 1.3  # station peak / one single-camera process's peak, at most (issue 28)
GOAL_THROUGHPUT = 1.0  # station frames/s / the single processes' frames/s, at least (issue 28)


# --- the videos
def default_videos(folder: Path, frames: int, cameras: int) -> list[Path]:
    """`cameras` MJPG videos of `frames` frames each from real images: good textiles, textiles with local
    defects, solar cells, in turn."""
    from winclip.calibration.evaluation.datasets import elpv_images, textile_images
    from winclip.runtime.images import read_image

    sets = (lambda n: textile_images("nominal", n), lambda n: textile_images("local", n), elpv_images)
    videos = []
    for c in range(cameras):
        images = [read_image(p) for p in sets[c % len(sets)](min(frames, 20))]
        if not images:
            raise click.ClickException("no images in the dev extra's data sets: pip install -e '.[dev]', "
                                       "or pass --video")
        videos.append(write_video(folder / f"camera-{c + 1}.avi", [images[i % len(images)] for i in range(frames)]))
    return videos


def write_video(path: Path, images: list, fps: float = 10.0) -> Path:
    """An MJPG .avi (every OpenCV build writes it) of the images, in order (gray ones as BGR)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise click.ClickException(f"{path}: OpenCV cannot write an MJPG video here")
    for image in images:
        writer.write(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def video_frames(path: Path) -> int:
    """The frames OpenCV decodes from a video file (counted, not the header's claim)."""
    import cv2

    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.grab():
        n += 1
    cap.release()
    return n


# --- the commands of the two arms
def engine_args(cfg: dict) -> list[str]:
    args = ["--backend", cfg["backend"], "--provider", cfg["provider"], "--precision", cfg["precision"]]
    return args + (["--threads", str(cfg["threads"])] if cfg.get("threads") else [])


def part_args(cfg: dict, camera: int) -> list[str]:
    args = ["--object", cfg["object"]] if cfg.get("object") else []
    return args + (["--profile", cfg["profiles"][camera]] if cfg.get("profiles") else [])


def single_command(cfg: dict, camera: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "winclip.runtime.line.cli", cfg["bundle"], "--source", cfg["videos"][camera],
            "--out", str(out), "--overlays", "none", *engine_args(cfg), *part_args(cfg, camera)]


def station_file(cfg: dict, out: Path) -> str:
    """The station file of the station arm: the singles' options, one [[camera]] per video."""
    engine = {"backend": cfg["backend"], "provider": cfg["provider"], "precision": cfg["precision"],
              **({"threads": cfg["threads"]} if cfg.get("threads") else {})}
    lines = [f"bundle = {json.dumps(cfg['bundle'])}", "", "[engine]",
             *(f"{k} = {json.dumps(v)}" for k, v in engine.items()),
             "", "[outputs]", f"out = {json.dumps(str(out))}", 'overlays = "none"']
    for c, video in enumerate(cfg["videos"]):
        lines += ["", "[[camera]]", f'name = "camera-{c + 1}"', f"source = {json.dumps(video)}"]
        if cfg.get("object"):
            lines.append(f"object = {json.dumps(cfg['object'])}")
        if cfg.get("profiles"):
            lines.append(f"profile = {json.dumps(cfg['profiles'][c])}")
    return "\n".join(lines) + "\n"


def station_command(cfg: dict, work: Path, out: Path) -> list[str]:
    path = work / "station.toml"
    path.write_text(station_file(cfg, out))
    return [sys.executable, "-m", "winclip.runtime.line.cli", "--station", str(path)]


# --- running and measuring processes
def vm_rss_mib(pid: int) -> float:
    """A running process's resident memory now, MiB (0 once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_together(commands: list[list[str]], env: dict, work: Path) -> dict:
    """Start the commands at once and wait for all: each one's exit code, stderr and peak RSS (ru_maxrss through
    wait4), the highest sum of their VmRSS sampled together, and the wall time from the first start to the last
    exit."""
    logs = [work / f"process-{i}.err" for i in range(len(commands))]
    handles = [open(path, "w") for path in logs]
    started = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=h, env=env) for cmd, h in zip(commands, handles)]
    running = threading.Event()
    running.set()
    summed = [0.0]

    def sample():
        while running.is_set():
            summed[0] = max(summed[0], sum(vm_rss_mib(p.pid) for p in procs))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = []
    try:
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            results.append({"returncode": proc.returncode, "peak_rss_mib": usage.ru_maxrss / 1024})
    finally:
        running.clear()
        sampler.join()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        for h in handles:
            h.close()
    wall = time.monotonic() - started
    for result, path in zip(results, logs):
        result["stderr"] = path.read_text()
    return {"processes": results, "sampled_sum_peak_mib": summed[0], "wall_s": wall}


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def event_figures(events: list[dict]) -> dict:
    """What one run's events say: frames scored and with errors, the span from the first frame read to the last
    frame scored, and the per-frame latencies (total, engine), ms.

    A frame event's `time` is when its frame was read (a video reader reads a few frames ahead of scoring), so
    the span ends at the last source_ended event (written once a video's last frame is scored), or, without
    one, at the latest frame's read time plus its own latency."""
    frames = [e for e in events if "frame" in e and "event" not in e]
    scored = [e for e in frames if "error" not in e]
    if not scored:
        return {"frames": 0, "errors": len(frames), "first_s": None, "last_s": None, "read_s": [], "frame_ms": [],
                "engine_ms": []}
    first = min(e["time"] for e in scored)
    ends = [e["time"] for e in events if e.get("event") == "source_ended"]
    last = max(ends) if ends else max(e["time"] + e["latency_ms"]["total"] / 1000 for e in scored)
    return {"frames": len(scored), "errors": len(frames) - len(scored), "first_s": first, "last_s": last,
            "read_s": sorted(e["time"] for e in scored), "frame_ms": [e["latency_ms"]["total"] for e in scored],
            "engine_ms": [e["latency_ms"]["engine"] for e in scored]}


def arm_figures(per_process: list[dict], run: dict) -> dict:
    """One arm's run in figures: its processes' event figures and measured peaks combined."""
    spans = [f for f in per_process if f["first_s"] is not None]
    frames = sum(f["frames"] for f in per_process)
    span = max(f["last_s"] for f in spans) - min(f["first_s"] for f in spans) if spans else 0.0
    peaks = [p["peak_rss_mib"] for p in run["processes"]]
    # while every process scored: from the last one's first frame to the first one's last (start-up staggered
    # over the processes left out); frames counted by their read time
    both = (max(f["first_s"] for f in spans), min(f["last_s"] for f in spans)) if spans else (0.0, 0.0)
    inside = sum(1 for f in spans for t in f["read_s"] if both[0] <= t <= both[1])
    together = both[1] - both[0]
    return {"frames": frames, "errors": sum(f["errors"] for f in per_process),
            "span_s": span, "fps": frames / span if span > 0 else 0.0, "wall_s": run["wall_s"],
            "all_running_s": together, "fps_all_running": inside / together if together > 0 else None,
            "peak_rss_mib": peaks, "peak_sum_mib": sum(peaks), "sampled_sum_peak_mib": run["sampled_sum_peak_mib"],
            "frame_p50_ms": _median(v for f in per_process for v in f["frame_ms"]),
            "engine_p50_ms": _median(v for f in per_process for v in f["engine_ms"])}


def _median(values) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def last_error(stderr: str, returncode: int) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {returncode}"


def run_arm(arm: str, cfg: dict, env: dict, work: Path) -> dict:
    """One run of an arm ('station' or 'singles'): its figures, or {"error": ...}."""
    work = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=work))
    cameras = range(len(cfg["videos"]))
    if arm == "station":
        outs = [work / "out"]
        commands = [station_command(cfg, work, outs[0])]
    else:
        outs = [work / f"out-{c + 1}" for c in cameras]
        commands = [single_command(cfg, c, outs[c]) for c in cameras]
    run = run_together(commands, env, work)
    failed = next((p for p in run["processes"] if p["returncode"] != 0), None)
    if failed is not None:
        return {"error": last_error(failed["stderr"], failed["returncode"])}
    figures = arm_figures([event_figures(read_events(out / "events.jsonl")) for out in outs], run)
    expected = len(cfg["videos"]) * cfg["frames"] if cfg["frames"] else None
    if figures["errors"] or (expected is not None and figures["frames"] != expected):
        figures["warning"] = f"{figures['frames']} frames scored, {figures['errors']} errors (expected {expected})"
    return figures


def ratios(station: dict, singles: dict) -> dict:
    """One round's comparison: the station's peak against one single process's (the median of theirs) and
    against their sum; its frames/s against theirs."""
    one = statistics.median(singles["peak_rss_mib"])
    return {"memory_vs_one_single": station["peak_sum_mib"] / one,
            "memory_vs_singles_sum": station["peak_sum_mib"] / singles["peak_sum_mib"],
            "fps_vs_singles": station["fps"] / singles["fps"] if singles["fps"] else None,
            "fps_vs_singles_all_running": (station["fps"] / singles["fps_all_running"]
                                           if singles.get("fps_all_running") else None)}


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds of each arm's figures and of the per-round ratios, with the goals' verdicts."""
    summary: dict = {}
    for arm in ("station", "singles"):
        runs = [r[arm] for r in rounds]
        summary[arm] = {key: _median(r[key] for r in runs if r.get(key) is not None) for key in
                        ("frames", "fps", "span_s", "fps_all_running", "all_running_s", "wall_s", "peak_sum_mib",
                         "sampled_sum_peak_mib", "frame_p50_ms", "engine_p50_ms")}
        summary[arm]["one_process_peak_mib"] = _median(statistics.median(r["peak_rss_mib"]) for r in runs)
    per_round = [ratios(r["station"], r["singles"]) for r in rounds]
    summary["ratios"] = {key: _median(r[key] for r in per_round if r[key] is not None) for key in per_round[0]}
    summary["ratios_per_round"] = per_round
    summary["goals"] = {
        "memory_vs_one_single <= 1.3": summary["ratios"]["memory_vs_one_single"] <= GOAL_MEMORY,
        "fps_vs_singles >= 1.0": (summary["ratios"]["fps_vs_singles"] or 0) >= GOAL_THROUGHPUT}
    return summary


# --- the report
def versions() -> dict:
    import cv2
    import numpy

    out = {"numpy": numpy.__version__, "opencv": cv2.__version__}
    try:
        from importlib.metadata import version

        out["winclip-edge"] = version("winclip-edge")
    except Exception:  # not installed as a distribution (a bare checkout): the commit below says it
        pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def markdown(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    features = " ".join(m.get("cpu_features", []))
    lines = [f"machine: {m.get('cpu', '')} ({m['machine']}, {m['cores']} cores, {features}); "
             f"python {m['python']}, onnxruntime {m['onnxruntime']}"
             + (f", openvino {m['openvino']}" if m.get("openvino") else "")
             + f", opencv {result['versions']['opencv']}, numpy {result['versions']['numpy']}"
             + (f"; commit {result['versions']['commit']}" if result['versions'].get("commit") else ""),
             f"engine: {result['engine']} on {result['backend']} {result['provider']}, threads "
             f"{result['threads'] or 'default (all cores)'}; part: {result['part']}; {result['cameras']} cameras, "
             f"{result['frames_per_camera']} frames each; {len(result['rounds'])} interleaved rounds; "
             f"load average {result['load_average']:.2f} at the start, {result['load_average_end']:.2f} at the end"
             + (f"; {result['note']}" if result.get("note") else ""), "",
             "| arm | processes | frames | frames/s | span s | frames/s while all ran (s) | wall s (start-up "
             "included) | peak RSS MiB (sum of processes) | one process's peak MiB | sampled concurrent RSS peak "
             "MiB | frame p50 ms | engine p50 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, processes in (("station", 1), ("singles", result["cameras"])):
        a = s[arm]
        lines.append(f"| {arm} | {processes} | {a['frames']:.0f} | {a['fps']:.2f} | {a['span_s']:.2f} | "
                     f"{_fmt(a['fps_all_running'], 2)} ({_fmt(a['all_running_s'], 2)}) | "
                     f"{a['wall_s']:.2f} | {a['peak_sum_mib']:.0f} | {a['one_process_peak_mib']:.0f} | "
                     f"{a['sampled_sum_peak_mib']:.0f} | {_fmt(a['frame_p50_ms'])} | {_fmt(a['engine_p50_ms'])} |")
    r = s["ratios"]
    lines += ["", "| ratio (median of per-round ratios) | value | per round | goal |", "|---|---|---|---|",
              f"| station peak / one single process's peak | {r['memory_vs_one_single']:.3f} | "
              f"{_per_round(s, 'memory_vs_one_single')} | <= {GOAL_MEMORY} "
              f"({'met' if s['goals']['memory_vs_one_single <= 1.3'] else 'missed'}) |",
              f"| station peak / the singles' summed peaks | {r['memory_vs_singles_sum']:.3f} | "
              f"{_per_round(s, 'memory_vs_singles_sum')} | |",
              f"| station frames/s / the singles' frames/s | {_fmt(r['fps_vs_singles'], 3)} | "
              f"{_per_round(s, 'fps_vs_singles')} | >= {GOAL_THROUGHPUT} "
              f"({'met' if s['goals']['fps_vs_singles >= 1.0'] else 'missed'}) |",
              f"| station frames/s / the singles' frames/s while all ran | {_fmt(r['fps_vs_singles_all_running'], 3)}"
              f" | {_per_round(s, 'fps_vs_singles_all_running')} | |",
              "", "frames/s: frames scored / seconds from the first frame read to the last frame scored; while all "
              "ran: only the span in which every process was scoring (the singles' staggered start-up left out). "
              "Latency per frame as the events record it: a batch's time shared among its frames (the station "
              "batches one frame per camera)."]
    warnings = [f"round {i + 1} {arm}: {r[arm]['warning']}" for i, r in enumerate(result["rounds"])
                for arm in ("station", "singles") if r[arm].get("warning")]
    return "\n".join(lines + [""] + warnings if warnings else lines)


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _per_round(summary: dict, key: str) -> str:
    return ", ".join(_fmt(r[key], 3) for r in summary["ratios_per_round"])


# --- the command
@dataclass(frozen=True)
class Settings:
    """The command's options: the engine both arms run, the part, the cameras, the rounds and the outputs."""

    precision: str
    threads: int | None
    backend: str
    provider: str
    object_name: str | None
    profiles: tuple  # one line profile for every camera, or one per camera
    frames: int  # per camera, in the made videos
    cameras: int
    videos: tuple  # your own recordings, one per camera, instead of made videos
    rounds: int
    json_out: Path | None
    md_out: Path | None
    note: str


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", default="int8", type=click.Choice(("auto", "fp32", "fp16", "int8")),
              help="Engine both arms run (a profile's engine must match it).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of every process, station and singles alike. [default: all cores]")
@click.option("--backend", default="onnxruntime", type=click.Choice(("onnxruntime", "openvino")),
              help="Backend of both arms (not auto: its timing at start-up would be part of the measurement).")
@click.option("--provider", default="cpu", help="What the backend runs on (winclip-inspect --provider).")
@click.option("--object", "object_name", default=None,
              help="Object every camera scores zero-shot. [default: the bundle's first, unless --profile]")
@click.option("--profile", "profiles", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="A line profile (winclip-calibrate) for every camera, or one per camera (repeat, in camera "
                   "order): WinCLIP+ instead of zero-shot.")
@click.option("--frames", type=click.IntRange(min=2, max=100000), default=60,
              help="Frames per camera in the made videos (each camera's video as long as the others).")
@click.option("--cameras", type=click.IntRange(min=1, max=16), default=3, help="Cameras (made videos).")
@click.option("--video", "videos", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="Your own video file for a camera (repeat, one per camera) instead of the made ones.")
@click.option("--rounds", type=click.IntRange(min=1, max=100), default=3,
              help="Interleaved rounds (station, singles; swapped every other round).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every run's figures and the summary here.")
@click.option("--md", "md_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the tables here.")
@click.option("--note", default="", help="Recorded with the results (say 'under load' on a shared machine).")
def main(bundle, **values):
    """One winclip-inspect --station process for N cameras against N single-camera processes on BUNDLE."""
    s = Settings(**values)
    from winclip.benchmarks.bench_cli import machine
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.errors import WinclipError

    try:
        b = Bundle.load(bundle)
        engine = b.engine(s.precision).file if s.precision != "auto" else "auto"
    except WinclipError as exc:
        raise click.ClickException(str(exc)) from None
    count = len(s.videos) or s.cameras
    if s.profiles and len(s.profiles) not in (1, count):
        raise click.BadParameter(f"give one profile, or one per camera ({count}), not {len(s.profiles)}",
                                 param_hint="--profile")
    object_name = s.object_name
    if not s.profiles and object_name is None:
        object_name = b.objects[0]
    work = Path(tempfile.mkdtemp(prefix="winclip-bench-station-"))
    try:
        try:
            made = [Path(v).resolve() for v in s.videos] or default_videos(work / "videos", s.frames, s.cameras)
        except WinclipError as exc:
            raise click.ClickException(str(exc)) from None
        per_camera = [video_frames(v) for v in made]
        cfg = {"bundle": str(bundle.resolve()), "precision": s.precision, "threads": s.threads, "backend": s.backend,
               "provider": s.provider, "object": object_name,
               "profiles": [str(Path(p).resolve()) for p in s.profiles] * (count if len(s.profiles) == 1 else 1),
               "videos": [str(v) for v in made], "frames": per_camera[0] if len(set(per_camera)) == 1 else None}
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
        result = {"machine": machine(), "versions": versions(), "platform": platform.platform(), "engine": engine,
                  "backend": s.backend, "provider": s.provider, "precision": s.precision, "threads": s.threads,
                  "part": ("profile " + ", ".join(Path(p).name for p in s.profiles)) if s.profiles
                  else f"zero-shot {object_name!r}", "cameras": count, "frames_per_camera": per_camera,
                  "load_average": os.getloadavg()[0], "note": s.note, "rounds": []}
        click.echo("warm-up (fills the optimised-graph cache; not counted)", err=True)
        warm = run_together([single_command(cfg, 0, work / "warm-up") + ["--max-frames", "2"]], env, work)
        if warm["processes"][0]["returncode"] != 0:
            p = warm["processes"][0]
            raise click.ClickException(f"winclip-inspect failed: {last_error(p['stderr'], p['returncode'])}")
        for r in range(s.rounds):
            row = {}
            for arm in (("station", "singles") if r % 2 == 0 else ("singles", "station")):
                click.echo(f"round {r + 1}/{s.rounds}: {arm}", err=True)
                row[arm] = run_arm(arm, cfg, env, work)
                if "error" in row[arm]:
                    raise click.ClickException(f"round {r + 1}, {arm}: {row[arm]['error']}")
            result["rounds"].append(row)
        result["summary"] = summarize(result["rounds"])
        result["load_average_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(result)
    click.echo(table)
    write_results(result, table, s.json_out, s.md_out)


if __name__ == "__main__":
    sys.exit(main())
