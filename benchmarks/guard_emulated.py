"""A bundle's engine guarded again on another CPU, emulated: what an engine does on a box this machine is not.

An int8 engine's guard runs on the CPU that made it, but whether its kernels saturate depends on the CPU
that runs it: without an int8 dot product (AVX2 only) u8 x s8 pairs are added in saturating 16-bit
registers. QEMU's user mode runs the engine's frames under a CPU model (default: Haswell, AVX2 + FMA, no
AVX-512, no VNNI): CPUID says that model, so ONNX Runtime and OpenVINO pick the kernels they would pick
there, and QEMU carries out their instructions bit for bit, saturation included. The fp32 reference runs
here (it does not depend on the ISA beyond rounding). The frames are the engine's own held-out split (the
seed and count its guard recorded), so the numbers compare with that guard's. Emulation is tens of times
slower than the host: its times are not speeds.

    python -m winclip.benchmarks.guard_emulated BUNDLE --images DIR [--backend openvino] [--cpu MODEL] [--out STEM]
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from winclip.benchmarks.results import write_results
from winclip.calibration.engines import BUILDERS
from winclip.calibration.engines.build import guard_backend, guard_scoring
from winclip.calibration.engines.frames import load_frame_sets
from winclip.calibration.engines.guard import GuardLimits, guard
from winclip.runtime import cpu
from winclip.runtime.bundle import Bundle
from winclip.runtime.command import CONTEXT
from winclip.runtime.preprocess import Preprocessor

# QEMU's Haswell less the features its TCG cannot emulate (each would print a warning on every start)
HASWELL = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
CHILD_LIMIT_S = 4 * 3600  # ViT-B-16+ runs minutes a frame emulated


@dataclass(frozen=True)
class Target:
    """The engine to guard again: which bundle, whose engine, and the frames its guard held out."""

    bundle: Path
    backend: str
    precision: str
    images: Path


def _engine(bundle: Bundle, target: Target):
    builder = BUILDERS.get((target.backend, target.precision))
    if builder is None:
        raise click.ClickException(f"no {target.precision} engine is made for {target.backend}")
    try:
        return builder, bundle.manifest.engine(target.precision, builder.format)
    except KeyError:
        raise click.ClickException(f"{target.bundle} has no {target.precision} engine for {target.backend}; "
                                   f"make it with winclip-quantize first") from None


def _engine_backend(bundle: Bundle, target: Target, compute: str | None):
    """The engine on its backend as its guard runs it, at the compute precision given."""
    builder, engine = _engine(bundle, target)
    data, _ = bundle.read_engine(engine)
    return guard_backend(data, engine, bundle, builder.guard_device, target.backend, bundle.read_weights(engine),
                         compute)


def run_candidate(target: Target, frames_npz: Path, out_npz: Path) -> None:
    """The emulated side: the engine's outputs for every saved batch, and the CPU it believed it ran on."""
    bundle = Bundle.load(target.bundle)
    builder, _ = _engine(bundle, target)
    backend = _engine_backend(bundle, target, builder.guard_compute())
    saved = np.load(frames_npz)
    outputs, seconds = {}, []
    for key in sorted(saved.files):
        t0 = time.perf_counter()
        for name, value in backend.run(saved[key]).items():
            outputs[f"{key}/{name}"] = value
        seconds.append(time.perf_counter() - t0)
        print(f"emulated: {key} in {seconds[-1]:.0f} s", file=sys.stderr, flush=True)
    machine = cpu.current()
    outputs["cpu"] = np.array(json.dumps({"record": machine.record(), "describe": machine.describe(),
                                          "compute": builder.guard_compute(), "seconds": seconds}))
    np.savez(out_npz, **outputs)


class Replay:
    """A backend that answers each batch with the outputs saved for it."""

    def __init__(self, batches: dict[str, np.ndarray], outputs: dict[str, dict[str, np.ndarray]]):
        self._by_bytes = {batches[key].tobytes(): outputs[key] for key in batches}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._by_bytes[batch.tobytes()]


def guard_emulated(target: Target, model: str, qemu: str) -> dict:
    """The engine's guard with its frames run under QEMU's `model`; the recorded guard beside it."""
    bundle = Bundle.load(target.bundle)
    m = bundle.manifest
    builder, engine = _engine(bundle, target)
    if not engine.guard:
        raise click.ClickException(f"the {engine.label} engine has no recorded guard to compare with")
    recorded = engine.made_by.get("frames")
    if not recorded:
        raise click.ClickException(f"the {engine.label} engine records no frames its guard held out")
    object_name = engine.guard.get("object") or bundle.objects[0]
    scorer, memory_key = guard_scoring(bundle, target.precision, object_name)
    sets = load_frame_sets(target.images, Preprocessor(m.preprocess), recorded["holdout"], 0, recorded["seed"])
    batches = {f"holdout-{i:02d}": b for i, b in enumerate(sets.holdout)}
    batches |= {f"memory-{i:02d}": b for i, b in enumerate(sets.memory)}
    with tempfile.TemporaryDirectory(prefix="winclip-guard-emulated-") as tmp:
        frames_npz, out_npz = Path(tmp) / "frames.npz", Path(tmp) / "outputs.npz"
        np.savez(frames_npz, **batches)
        command = [qemu, "-cpu", model, sys.executable, "-m", "winclip.benchmarks.guard_emulated",
                   str(target.bundle), "--images", str(target.images), "--backend", target.backend,
                   "--precision", target.precision, "--emulated-run", str(frames_npz), str(out_npz)]
        t0 = time.perf_counter()
        proc = subprocess.run(command, timeout=CHILD_LIMIT_S, stderr=None)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise click.ClickException(f"the emulated run failed (exit {proc.returncode})")
        saved = np.load(out_npz)
        emulated = json.loads(str(saved["cpu"]))
        outputs = {batch: {} for batch in batches}
        for name in saved.files:
            if "/" in name:
                batch, output = name.split("/", 1)
                outputs[batch][output] = saved[name]
    fp32 = bundle.engine("fp32")
    data, _ = bundle.read_engine(fp32)
    reference = guard_backend(data, fp32, bundle, builder.guard_device, builder.reference_backend)
    limits = GuardLimits(**{k: v for k, v in engine.guard.get("limits", {}).items()
                            if k in GuardLimits.__dataclass_fields__})
    report = guard(reference, Replay(batches, outputs), scorer, sets.holdout, sets.memory, memory_key, limits)
    here = _engine_backend(bundle, target, emulated["compute"])
    same_engine_here = {k: here.run(b) for k, b in batches.items()}
    return {"bundle": target.bundle.resolve().name, "backbone": m.backbone.get("name"), "engine": engine.label,
            "file": engine.file, "settings": engine.made_by.get("settings"),
            "made_on": engine.made_by.get("cpu"), "recorded_guard": engine.guard,
            "host": {"record": cpu.current().record(), "describe": cpu.current().describe(),
                     "machine": platform.machine()},
            "emulated": {"qemu": qemu_version(qemu), "model": model, **emulated, "wall_s": round(wall, 1)},
            "guard_emulated": report, "limits": asdict(limits),
            "emulated_vs_here": differences(same_engine_here, outputs)}


def differences(here: dict[str, dict[str, np.ndarray]], there: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per output, the largest difference between the same engine's answers on two CPUs, absolute and as a
    share of the output's largest magnitude: quantisation noise where their int8 kernels agree (their paths
    differ, ~1 %), far more where one saturates."""
    report = {}
    for name in next(iter(here.values())):
        diff = max(float(np.abs(here[k][name] - there[k][name]).max()) for k in here)
        scale = max(float(np.abs(here[k][name]).max()) for k in here)
        report[name] = {"max_abs": diff, "relative": diff / scale if scale else diff}
    return report


def qemu_version(qemu: str) -> str:
    return subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _row(name: str, report: dict) -> str:
    cos = report["embedding_cosine_min"]
    modes = report["modes"]
    cells = [f"{modes[m]['map_pearson_median']:.4f} / {modes[m]['map_pearson_min']:.4f} / "
             f"{modes[m]['score_spearman']:.4f}" for m in ("zero-shot", "few-shot")]
    return (f"| {name} | {cells[0]} | {cells[1]} | {min(cos.values()):.4f} ({min(cos, key=cos.get)}) | "
            f"{'passed' if report['passed'] else 'FAILED'} |")


def markdown(result: dict) -> str:
    em, made = result["emulated"], result["made_on"] or {}
    return "\n".join([
        f"# {result['engine']} engine guarded again on an emulated {em['model'].split(',')[0]}",
        "",
        f"- bundle: `{result['bundle']}` ({result['backbone']}), engine `{result['file']}`",
        f"- recipe: `{json.dumps(result['settings'], sort_keys=True)}`",
        f"- made and first guarded on: {made.get('model') or 'an unrecorded CPU'} ({' '.join(made.get('flags', []))}); "
        f"this run's host: {result['host']['describe']}",
        f"- emulated: {em['qemu']}, `-cpu {em['model']}`; the engine saw: {em['describe']}; "
        f"compute {em['compute'] or 'as the backend chooses'}",
        f"- emulated run: {em['wall_s']} s for {len(em['seconds'])} frames (emulation: not a speed)",
        "",
        "| guard run on | map Pearson median / min / score Spearman, zero-shot | the same, few-shot | "
        "lowest embedding cosine | guard |",
        "|---|---|---|---|---|",
        _row("the host (recorded when made)", result["recorded_guard"]),
        _row(f"emulated {em['model'].split(',')[0]}", result["guard_emulated"]),
        "",
        "Failures, emulated: " + ("; ".join(result["guard_emulated"]["failures"]) or "none"),
        "",
        f"The same engine here{' at ' + em['compute'] + ' compute' if em['compute'] else ''} against its emulated run, "
        "largest difference "
        "(absolute; share of the output's largest magnitude): "
        + ", ".join(f"{name} {d['max_abs']:.2e} ({d['relative']:.1e})"
                    for name, d in result["emulated_vs_here"].items()),
        ""])


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The folder the engine was made from (its guard's held-out frames are taken from it again).")
@click.option("--backend", type=click.Choice(sorted({b for b, _ in BUILDERS})), default="openvino", show_default=True,
              help="Whose engine to guard again.")
@click.option("--precision", default="int8", show_default=True, help="Which of its engines.")
@click.option("--cpu", "model", default=HASWELL, show_default=True, help="QEMU's CPU model to run the engine on.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write STEM.md and STEM.json beside the printed table.")
@click.option("--emulated-run", nargs=2, type=click.Path(path_type=Path), default=None, hidden=True)
def main(bundle: Path, images: Path, backend: str, precision: str, model: str, out: Path | None,
         emulated_run) -> None:
    """Guard BUNDLE's engine again with its frames run under an emulated CPU (QEMU user mode)."""
    target = Target(bundle, backend, precision, images)
    if emulated_run is not None:
        run_candidate(target, *emulated_run)
        return
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        raise click.ClickException("QEMU's user-mode emulator is missing: apt-get install qemu-user-static")
    result = guard_emulated(target, model, qemu)
    text = markdown(result)
    click.echo(text)
    if out is not None:
        write_results(result, text, out.with_suffix(".json"), out.with_suffix(".md"), default=str)


if __name__ == "__main__":
    main()
