"""`winclip-bench`: latency of a bundle's engines per frame and per stage, on each backend side by side,
beside the torch reference, anomalib's WinCLIP (where installed) and the machine's own matrix-multiply
throughput, all measured in one run, with the CPU model and ISA flags the numbers belong to.

Every configuration runs in a fresh child process (winclip.benchmarks.measure), so
its cold start and peak memory are its own. Frames are real images.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import product
from pathlib import Path

import click
import numpy as np

from winclip.benchmarks.results import write_results
from winclip.runtime.command import CONTEXT, Command, Whole, backend_options
from winclip.benchmarks.measure import frame_times
from winclip.runtime.defaults import OPSET
from winclip.runtime.errors import install_hint


def _csv(kind, choices=None):
    def parse(ctx, param, value):
        try:
            items = [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list, got {value!r}") from None
        if not items or (choices and any(i not in choices for i in items)):
            raise click.BadParameter(f"choose from {', '.join(map(str, choices))}" if choices else "empty list")
        if kind is int and any(i < (1 if param.name == "batches" else 0) for i in items):
            raise click.BadParameter("out of range")
        return items
    return parse


def machine() -> dict:
    """What the numbers were measured on: the CPU model and ISA flags, cores, library versions."""
    import onnxruntime as ort

    from winclip.runtime import cpu

    this = cpu.current()
    info = {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "cpu": this.model, "cpu_features": this.reported_flags, "int8_dot": this.int8_dot,
            "cpu_class": this.isa_class, "headline": this.headline()}
    try:
        import openvino

        info["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    return info


def gemm_peaks(size: int = 2048) -> dict:
    """The machine's matrix-multiply throughput, GFLOP/s: numpy fp32, and ONNX Runtime fp32 / int8 where onnx is installed."""
    out = {}
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(10))
    out["numpy_fp32"] = 2 * size ** 3 / best / 1e9
    try:
        out.update(_ort_gemm_peaks())
    except ImportError:
        out["note"] = f"onnx not installed: ONNX Runtime GEMM peaks not measured ({install_hint('quantize')})"
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _ort_gemm_peaks() -> dict:
    """A window-sized product (3000 x 896 x 3584, the MLP of a frame's windows) in fp32 and dynamic int8."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m, k, n = 3000, 896, 3584
    weight = (np.random.default_rng(2).standard_normal((k, n)) * 0.02).astype(np.float32)
    x = np.random.default_rng(3).standard_normal((m, k)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(weight, "w")])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "gemm.onnx"
        int8 = Path(tmp) / "gemm-int8.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(fp32))
        quiet = logging.Filter()
        quiet.filter = lambda record: "pre-processing before quantization" not in record.getMessage()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        finally:
            logging.getLogger().removeFilter(quiet)
        for name, path in (("onnxruntime_fp32", fp32), ("onnxruntime_int8", int8)):
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            session.run(None, {"x": x})
            best = min(_timed(lambda: session.run(None, {"x": x})) for _ in range(10))
            out[name] = 2 * m * k * n / best / 1e9
    return out


def default_frames(folder: Path) -> tuple[list[Path], list[Path]]:
    """Real frames from the [dev] datasets: textiles (250 px colour), solar cells (300 px gray), and a
    1000x1250 mosaic of textiles (an MVTec-sized frame); normals: nominal textiles."""
    import cv2

    from winclip.calibration.evaluation.datasets import elpv_images, textile_images
    from winclip.runtime.images import read_image

    local = textile_images("local", 20)
    tiles = [read_image(p) for p in local]
    mosaic = np.concatenate([np.concatenate(tiles[r * 5:(r + 1) * 5], axis=1) for r in range(4)], axis=0)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "textile-mosaic-1000x1250.png"), mosaic)
    images = local[:3] + elpv_images(2, start=50) + [folder / "textile-mosaic-1000x1250.png"]
    return images, textile_images("nominal", 8)


def portable_path(path: str | Path) -> str:
    """A path as a recorded result may hold it: never the build machine's own folders.

    A file of an installed package is named from the package on ("elpv_dataset/data/images/cell0051.png"),
    a file under the working directory relative to it, anything else (a temporary folder) by its name.
    """
    path = Path(path)
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1:])
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def last_error(stderr: str, returncode: int) -> str:
    """A failed child's last non-blank line of stderr (its error), or its exit code."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {returncode}"


def json_child(argv: list[str]) -> dict:
    """Run a measuring child; its last line of stdout is one JSON object, or {"error": ...}."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": last_error(proc.stderr, proc.returncode)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(cfg: dict, work: Path) -> dict:
    path = work / f"config-{abs(hash(json.dumps(cfg, sort_keys=True)))}.json"
    path.write_text(json.dumps(cfg))
    return json_child([sys.executable, "-m", "winclip.benchmarks.measure", str(path)])


def engine_label(row: dict) -> str:
    """A row's engine for the table: the backend when it is not ONNX Runtime, then the engine."""
    backend = row.get("backend", "onnxruntime")
    what = row.get("engine_label") or row["precision"]
    return what if backend == "onnxruntime" else f"{backend} {what}"


ANOMALIB_HOWTO = ("install it in a venv of its own (it brings torch): python3.11 -m venv av && "
                  "av/bin/pip install anomalib open_clip_torch, then --anomalib-python av/bin/python")


def anomalib_interpreter(python: Path | None) -> tuple[str | None, str]:
    """The interpreter that has anomalib (and its version), or None and why the row is skipped."""
    exe = str(python) if python else sys.executable
    try:
        proc = subprocess.run([exe, "-c", "import anomalib, torch; print(anomalib.__version__)"],
                              capture_output=True, text=True, timeout=600)
        ok = proc.returncode == 0
    except OSError:
        ok = False
    if not ok:
        note = f"skipped: anomalib is not installed for {exe}; {ANOMALIB_HOWTO}"
        click.echo(f"warning: --compare-anomalib {note}", err=True)
        return None, note
    where = "this interpreter" if exe == sys.executable else "an interpreter of its own"  # no build-machine paths
    return exe, (f"anomalib {proc.stdout.strip()} (its fixed ViT-B-16+ backbone, torch, random weights), "
                 f"timed in {where}")


def run_anomalib_child(python: str, cfg: dict, work: Path) -> dict:
    """One anomalib configuration in its own interpreter (winclip.benchmarks.anomalib_child, run as a script)."""
    path = work / f"anomalib-{cfg['batch']}-{cfg['shots']}.json"
    path.write_text(json.dumps(cfg))
    raw = json_child([python, str(Path(__file__).with_name("anomalib_child.py")), str(path)])
    return raw if "error" in raw else frame_times(raw)


def markdown(result: dict) -> str:
    peaks = result["gemm_peak_gflops"]
    m = result["machine"]
    lines = [m.get("headline", f"CPU: {m.get('cpu', '')}"), "",
             f"machine: {m.get('cpu', '')} ({m['machine']}, {m['cores']} cores, "
             f"ISA: {' '.join(m.get('cpu_features', [])) or 'none known'}; int8 dot product: "
             f"{m.get('int8_dot') or 'none'}); onnxruntime {m['onnxruntime']}"
             + (f", openvino {m['openvino']}" if m.get("openvino") else ""),
             "GEMM peak, GFLOP/s: " + ", ".join(f"{k} {v}" for k, v in peaks.items() if k != "note"),
             f"frame FLOPs: {result['frame_gflop']:.1f} GFLOP; {result['frames']} timed frames per row after "
             f"{result['warmup']} warm-up", "",
             "| engine | provider | batch | shots | p50 ms | p95 ms | FPS | prep | engine | score | upsample | "
             "cold start s | peak RSS MiB | file MiB | GFLOP/s | % of peak | x fp32 | x torch |",
             "|" + "---|" * 18]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {engine_label(r)} | {r['provider']} | {r['batch']} | {r['shots']} | error: {r['error']} |")
            continue
        st = r.get("stages_ms", {})
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(
            f"| {engine_label(r)} | {r['provider']} | {r['batch']} | {r['shots']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['fps']:.2f} | {fmt(st.get('preprocess'), '.1f')} | {fmt(st.get('engine'), '.0f')} | "
            f"{fmt(st.get('scoring'), '.1f')} | {fmt(st.get('upsample'), '.1f')} | {fmt(r.get('cold_start_s'), '.2f')} | "
            f"{r['peak_rss_mib']:.0f} | {fmt(r.get('engine_mib'), '.0f')} | {fmt(r.get('gflops'), '.0f')} | "
            f"{fmt(r.get('pct_of_peak'), '.0f')} | {fmt(r.get('speedup_vs_fp32'), '.2f')} | "
            f"{fmt(r.get('speedup_vs_torch'), '.2f')} |")
    for kind, rows in (("torch reference", result.get("torch", [])), ("anomalib WinCLIP", result.get("anomalib", []))):
        for t in rows:
            if "error" in t:
                lines.append(f"\n{kind} (batch {t['batch']}, {t['shots']}-shot): error: {t['error']}")
            else:
                lines.append(f"\n{kind} (batch {t['batch']}, {t['shots']}-shot): p50 {t['p50_ms']:.0f} ms, "
                             f"p95 {t['p95_ms']:.0f} ms, peak RSS {t['peak_rss_mib']:.0f} MiB")
    for a in result.get("anomalib", []):
        faster = [f"{engine_label(r)} {r['speedup_vs_anomalib']:.2f}x" for r in result["rows"]
                  if r.get("speedup_vs_anomalib") and (r["batch"], r["shots"]) == (a["batch"], a["shots"])]
        if faster:
            lines.append(f"against anomalib (batch {a['batch']}, {a['shots']}-shot): {', '.join(faster)}")
    if result.get("anomalib_note"):
        lines.append(f"\nanomalib WinCLIP: {result['anomalib_note']}")
    return "\n".join(lines + stage_peak_lines(result["rows"]))


def stage_peak_lines(rows: list[dict]) -> list[str]:
    """Peak resident memory of each stage of every runtime configuration (each in a process of its own)."""
    measured = [r for r in rows if r.get("peak_mib")]
    if not measured:
        return []
    from winclip.benchmarks.measure import STAGES

    stages = [stage for stage in STAGES if any(stage in r["peak_mib"] for r in measured)]
    lines = ["", "peak resident memory per stage, MiB (the optimised-graph cache warm):", "",
             "| engine | provider | batch | shots | " + " | ".join(stages) + " | whole run |",
             "|" + "---|" * (len(stages) + 5)]
    for r in measured:
        cells = [f"{r['peak_mib'][s]:.0f}" if s in r["peak_mib"] else "-" for s in stages]
        lines.append(f"| {engine_label(r)} | {r['provider']} | {r['batch']} | {r['shots']} | {' | '.join(cells)} | "
                     f"{r['peak_rss_mib']:.0f} |")
    return lines


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", "precisions", default="fp32", callback=_csv(str, ("fp32", "int8", "fp16")),
              help="Engines to time, comma separated.")
@click.option("--provider", "providers", default="cpu", callback=_csv(str, ("cpu", "cuda")),
              help="Devices, comma separated (cpu for every backend; cuda for ONNX Runtime).")
@backend_options(parse=_csv(str, ("onnxruntime", "openvino", "auto")),
                 help_more=" Comma separated (onnxruntime,openvino,auto): their rows side by side.")
@click.option("--batch", "batches", default="1", callback=_csv(int), help="Frames per session call, comma separated.")
@click.option("--shots", "shots", default="0,4", callback=_csv(int), help="0 = zero-shot; K = WinCLIP+ with K normals.")
@click.option("--frames", type=Whole(1, 10_000), default=5, help="Timed batches per configuration.")
@click.option("--warmup", type=Whole(0, 1000), default=1, help="Untimed batches first.")
@click.option("--threads", type=Whole(1, 1024), default=None, help="Intra-op threads (ORT and torch). [default: all cores]")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder of real frames to time. [default: images from the dev extra's datasets]")
@click.option("--normal", "normal_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of normal images for the few-shot memory. [default: the dataset's normals, or --images]")
@click.option("--object", "object_name", default=None, help="Object to score. [default: the bundle's first]")
@click.option("--compare-torch", is_flag=True, help="Also time the plain torch WinCLIP on the same frames (needs the export extra).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="With --compare-torch: weights for the torch side. [default: random weights; speed does not depend on them]")
@click.option("--model-config", "model_configs", multiple=True, type=click.Path(path_type=Path),
              help="With --compare-torch: open_clip config JSON of a custom architecture; repeatable.")
@click.option("--compare-anomalib", is_flag=True,
              help="Also time anomalib's WinCLIP (torch; always ViT-B-16+, so compare a ViT-B-16+ bundle) on the "
                   "same frames where it is installed: in this Python or in --anomalib-python; skipped with a "
                   "message where it is not.")
@click.option("--anomalib-python", type=click.Path(path_type=Path), default=None,
              help="With --compare-anomalib: the Python of a venv that has anomalib. [default: this one]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write bench.json and bench.md here.")
def main(bundle, **values):
    """Time BUNDLE's engines per frame and per stage, with cold start, memory and FLOP rate.

    Prints a markdown table; every ratio in it comes from this one run on this
    one machine.
    """
    from winclip.runtime import cpu
    from winclip.benchmarks.flops import frame_flops
    from winclip.runtime.backends import backend_class

    plan = bench_plan(values)
    for name in plan.backends:
        backend_class(name)  # each chosen backend's library: one line naming its extra, not a traceback

    click.echo(cpu.current().headline(), err=True)  # first: every number below belongs to this class of CPU
    b = _checked_bundle(bundle, plan)
    work = Path(tempfile.mkdtemp(prefix="winclip-bench-"))
    frame_paths, normal_paths = _frames_to_time(plan, work)

    flops = frame_flops(b.manifest)["total"]
    click.echo("measuring the machine's GEMM throughput", err=True)
    peaks = gemm_peaks()
    base = {"bundle": str(Path(bundle).resolve()), "frames": plan.frames, "warmup": plan.warmup,
            "threads": plan.threads, "images": [str(p) for p in frame_paths], "normals": [str(p) for p in normal_paths],
            "object": plan.object_name, "checkpoint": str(plan.checkpoint) if plan.checkpoint else None,
            "model_configs": [str(Path(c).resolve()) for c in plan.model_configs], "remeasure": plan.remeasure}
    rows, torch_rows, anomalib_rows, anomalib_note = _measure_rows(plan, base, work)
    for r in [*rows, *torch_rows, *anomalib_rows]:
        if "error" not in r:
            r["p50_ms"], r["p95_ms"] = 1000 * r.pop("p50_s"), 1000 * r.pop("p95_s")
            if "stages_s" in r:
                r["stages_ms"] = {k: 1000 * v for k, v in r.pop("stages_s").items()}
    _add_rates_and_ratios(rows, torch_rows, anomalib_rows, bundle, flops, peaks)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "bundle": portable_path(bundle), "frame_gflop": flops / 1e9,
              "work_elimination": b.manifest.work_elimination, "gemm_peak_gflops": peaks, "frames": plan.frames,
              "warmup": plan.warmup, "images": [portable_path(p) for p in frame_paths], "rows": rows,
              "torch": torch_rows, "anomalib": anomalib_rows, "anomalib_note": anomalib_note}
    table = markdown(result)
    click.echo(table)
    out = plan.out
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_results(result, table, out / "bench.json", out / "bench.md", default=float)
        except OSError as exc:
            raise click.ClickException(f"cannot write to {out}: {exc.strerror or exc}") from None
    if all("error" in r for r in rows):
        raise click.ClickException("no configuration could be measured")


@dataclass(frozen=True)
class BenchPlan:
    """What one winclip-bench run times and where it writes: each field is the option of that name (lists are
    the comma-separated ones, parsed)."""

    precisions: list[str]  # engines to time
    providers: list[str]  # cpu, cuda
    backends: list[str]  # --backend: their rows side by side
    remeasure: bool  # backend auto measures the local backends again
    batches: list[int]  # frames per session call
    shots: list[int]  # 0 = zero-shot, K = WinCLIP+ with K normals
    frames: int  # timed batches per configuration
    warmup: int  # untimed batches first
    threads: int | None  # intra-op threads; None: all cores
    images: Path | None  # real frames to time; None: the dev extra's data sets
    normal_dir: Path | None  # normals for the memory; None: the data set's, or images
    object_name: str | None  # None: the bundle's first object
    compare_torch: bool  # also time the plain torch WinCLIP
    checkpoint: Path | None  # the torch side's weights; None: random
    model_configs: tuple[Path, ...]  # open_clip configs of custom architectures, for the torch side
    compare_anomalib: bool  # also time anomalib's WinCLIP where installed
    anomalib_python: Path | None  # a venv's Python that has anomalib; None: this one
    out: Path | None  # folder for bench.json and bench.md


def bench_plan(values: dict) -> BenchPlan:
    return BenchPlan(**{("backends" if name == "backend" else name): value for name, value in values.items()})


def _checked_bundle(bundle: Path, plan: BenchPlan):
    """The bundle, once it is known to have every engine asked for, and the torch side its extra (one line
    each, not a traceback)."""
    from winclip.runtime.backends.onnxruntime import choose_providers
    from winclip.runtime.bundle import Bundle
    from winclip.runtime.errors import BundleError

    try:
        b = Bundle.load(bundle)
        missing = [p for p in plan.precisions if p not in b.manifest.precisions]
        if missing:
            raise BundleError(f"the bundle has no {', '.join(missing)} engine (it has {', '.join(b.manifest.precisions)}); "
                              f"add one with winclip-quantize {bundle} --precision {missing[0]} --images DIR")
        if "onnxruntime" in plan.backends:
            for provider in plan.providers:
                choose_providers(provider)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    if plan.compare_torch:
        try:
            import open_clip  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise click.ClickException(f"--compare-torch needs the export extra: {install_hint('export')}") from None
    return b


def _frames_to_time(plan: BenchPlan, work: Path) -> tuple[list[Path], list[Path]]:
    """The frames to time and the normals for the memory: the folders given, else the data sets' images."""
    from winclip.runtime.images import ImageReadError, list_images

    images, normal_dir = plan.images, plan.normal_dir
    try:
        if images is not None:
            paths, _ = list_images(images)
            frame_paths = paths[:8]
            normal_paths = list_images(normal_dir)[0] if normal_dir else frame_paths
        else:
            frame_paths, normal_paths = default_frames(work / "frames")
            if normal_dir:
                normal_paths = list_images(normal_dir)[0]
    except (ImageReadError, Exception) as exc:
        if isinstance(exc, click.ClickException):
            raise
        raise click.ClickException(f"no frames to time: {exc}; pass --images DIR") from None
    if not frame_paths:
        raise click.ClickException(f"no images in {images}")
    if max(plan.shots) > len(normal_paths):
        raise click.ClickException(f"--shots {max(plan.shots)} needs that many normal images; {len(normal_paths)} found")
    return frame_paths, normal_paths


def _measure_rows(plan: BenchPlan, base: dict, work: Path) -> tuple[list, list, list, str | None]:
    """Every configuration in a child process of its own: the runtime's rows, torch's and anomalib's (with why
    anomalib's are missing, where they are)."""
    from tqdm import tqdm

    configs = list(product(plan.backends, plan.precisions, plan.providers, plan.batches, plan.shots))
    torch_configs = list(product(plan.batches, plan.shots)) if plan.compare_torch else []
    anomalib_python, anomalib_note = (anomalib_interpreter(plan.anomalib_python) if plan.compare_anomalib
                                      else (None, None))
    anomalib_configs = list(product(plan.batches, plan.shots)) if anomalib_python else []
    rows, torch_rows, anomalib_rows = [], [], []
    total = len(configs) + len(torch_configs) + len(anomalib_configs)
    with tqdm(total=total, unit="config", file=sys.stderr, disable=None) as bar:
        for backend, precision, provider, batch, k in configs:
            bar.set_description(f"{backend} {precision} {provider} b{batch} {k}-shot")
            r = run_child({**base, "engine": "runtime", "backend": backend, "precision": precision,
                           "provider": provider, "batch": batch, "shots": k}, work)
            rows.append({"backend": backend, "precision": precision, "provider": provider, "batch": batch,
                         "shots": k, **r})
            bar.update()
        for batch, k in torch_configs:
            bar.set_description(f"torch b{batch} {k}-shot")
            r = run_child({**base, "engine": "torch", "precision": "fp32", "provider": "cpu", "batch": batch,
                           "shots": k}, work)
            torch_rows.append({"batch": batch, "shots": k, **r})
            bar.update()
        for batch, k in anomalib_configs:
            bar.set_description(f"anomalib b{batch} {k}-shot")
            r = run_anomalib_child(anomalib_python, {**base, "batch": batch, "shots": k}, work)
            anomalib_rows.append({"batch": batch, "shots": k, **r})
            bar.update()
    return rows, torch_rows, anomalib_rows, anomalib_note


def _add_rates_and_ratios(rows: list, torch_rows: list, anomalib_rows: list, bundle: Path, flops: float,
                          peaks: dict) -> None:
    """Each measured runtime row's engine size, FLOP rate, share of the GEMM peak and speed-ups against fp32,
    torch and anomalib in the same batch and shots."""
    for r in rows:
        if "error" in r:
            continue
        r["engine_mib"] = sum((Path(bundle) / f).stat().st_size for f in r.get("engine_files", [r["engine_file"]])) / 2**20
        r["gflops"] = flops / (r["stages_ms"]["engine"] / 1000) / 1e9
        # fp32: the best fp32 GEMM rate measured here (numpy's BLAS or ONNX Runtime's own MatMul, whichever is
        # faster on this CPU), so a percentage above 100 means the graph beat every GEMM we measured
        fp32_peak = max((v for k, v in peaks.items() if k.endswith("_fp32") and isinstance(v, float)), default=None)
        peak = peaks.get("onnxruntime_int8") if r["precision"] == "int8" else fp32_peak
        r["pct_of_peak"] = 100 * r["gflops"] / peak if peak and r["provider"] == "cpu" else None
        same = [x for x in rows if x["precision"] == "fp32" and "error" not in x and
                (x["provider"], x["batch"], x["shots"]) == (r["provider"], r["batch"], r["shots"])]
        fp32 = next((x for x in same if x["backend"] == "onnxruntime"), same[0] if same else None)  # ORT fp32 first
        r["speedup_vs_fp32"] = fp32["p50_ms"] / r["p50_ms"] if fp32 else None
        t = next((x for x in torch_rows if "error" not in x and (x["batch"], x["shots"]) == (r["batch"], r["shots"])), None)
        r["speedup_vs_torch"] = t["p50_ms"] / r["p50_ms"] if t else None
        a = next((x for x in anomalib_rows if "error" not in x and (x["batch"], x["shots"]) == (r["batch"], r["shots"])),
                 None)
        r["speedup_vs_anomalib"] = a["p50_ms"] / r["p50_ms"] if a else None

if __name__ == "__main__":
    sys.exit(main())
