"""Which engine of a bundle runs where: the `--precision auto` policy, as a table, and whom it trusts.

A backend offers the engine formats it can run, best first (ONNX Runtime: ONNX;
OpenVINO: its IR, then ONNX), and the policy only ever picks among those. A
precision asked for by name runs if the bundle has it (with a warning when its
record does not vouch for it). `auto` walks the row of the device the backend
runs on and takes the first precision whose engine is *vouched for* — made by
this project's tools, with a recorded accuracy guard that passed limits at
least as strict as today's defaults — and whose guard holds on this CPU.
Otherwise fp32, the engine the export verified against torch, and failing that
the bundle's only engine the backend runs.

An int8 engine's guard holds for the kind of CPU it ran on: full-range weights
made where the int8 kernels add them exactly (x86 with VNNI, any ARM64 CPU) can
saturate on an x86 CPU without VNNI. Such an engine is warned about, and `auto`
passes it over.
"""

from __future__ import annotations

import logging

from winclip.runtime import cpu as cpus
from winclip.runtime.contract import FORMAT_ONNX, Engine, Manifest
from winclip.runtime.defaults import GUARD_LIMITS, PRECISIONS
from winclip.runtime.errors import BundleError

log = logging.getLogger(__name__)

TRUSTED_TOOLS = ("winclip-export", "winclip-quantize")  # made_by.tool of the engines this project makes


def auto_precisions(device_kind: str) -> tuple[tuple[str, str], ...]:
    """The precisions `auto` tries on a device kind ("cuda", "cpu"), in order, with the words that say why: read
    from runtime/defaults.py PRECISIONS when called (a row added there counts)."""
    return tuple((name, auto[device_kind]) for name, auto in PRECISIONS.items() if device_kind in auto)


def distrust(engine: Engine) -> str | None:
    """Why the engine's own record does not vouch for it, in words; None when it does."""
    tool = (engine.made_by or {}).get("tool")
    if tool not in TRUSTED_TOOLS:
        return f"it was made by {str(tool)[:40]!r}, not by winclip-edge" if tool else "its record names no maker"
    if engine.accepted_degraded:
        failures = "; ".join(str(f) for f in (engine.guard or {}).get("failures") or [])[:300]
        return "it FAILED its accuracy guard and was added with --accept-degraded" + (f" ({failures})" if failures
                                                                                      else "")
    if tool == "winclip-export" and engine.verification is not None:
        return None  # the graph the export checked against torch
    guard = engine.guard
    if not isinstance(guard, dict):
        return "it has no accuracy-guard record"
    if guard.get("passed") is not True:
        failures = "; ".join(str(f) for f in guard.get("failures") or [])[:300]
        return "it FAILED its accuracy guard" + (f" ({failures})" if failures else "")
    limits = guard.get("limits") if isinstance(guard.get("limits"), dict) else {}
    for name, floor in GUARD_LIMITS.items():
        if name in limits:
            value = limits[name]
            if _number(value) and value >= floor:
                continue
            return f"its guard was run with {name} {value!r}, looser than today's {floor}"
        # a limit added since the engine was made: its recorded numbers must meet it
        measured = _measured(guard, name)
        if measured is None or not measured >= floor:
            return f"its guard record shows {name} {measured!r}, below today's limit {floor}"
    return None


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _measured(guard: dict, name: str) -> float | None:
    """The lowest recorded number a limit applies to: per mode (map and score limits) or per output (cosines)."""
    if name == "embedding_cosine_min":
        values = list((guard.get(name) or {}).values()) if isinstance(guard.get(name), dict) else []
    else:
        modes = guard.get("modes") if isinstance(guard.get("modes"), dict) else {}
        values = [m.get(name) for m in modes.values() if isinstance(m, dict)]
    values = [v for v in values if _number(v)]
    return min(values) if values else None


def admitted(engine: Engine | None) -> bool:
    """An engine auto may pick: present and vouched for by its own record."""
    return engine is not None and distrust(engine) is None


def isa_problem(engine: Engine, cpu: cpus.CpuInfo) -> str | None:
    """Why `engine`'s guard does not hold on `cpu`, or None: full-range int8 weights made where the int8 kernels
    add them exactly (x86 with VNNI, ARM64), run on a CPU whose kernels can saturate on them (x86 without VNNI)."""
    made_on = (engine.made_by or {}).get("cpu") or {}
    settings = (engine.made_by or {}).get("settings") or {}
    maker = cpus.CpuInfo(str(made_on.get("model") or ""), str(made_on.get("machine") or ""),
                         frozenset(made_on.get("flags") or ()) | ({made_on["int8_dot"]} if made_on.get("int8_dot")
                                                                   else set()))
    if (engine.precision != "int8" or engine.format != FORMAT_ONNX or settings.get("reduce_range") is not False
            or cpus.full_range_int8_exact(maker) is None or cpus.full_range_int8_exact(cpu) is not None):
        return None
    made_with = made_on.get("int8_dot") or made_on.get("machine")
    return (f"the int8 engine {engine.file} has full-range weights made on a CPU with {made_with}, and "
            f"this CPU ({cpu.model or cpu.machine}) has no int8 dot-product instruction: its products can "
            "saturate here and its accuracy guard does not hold; re-run winclip-quantize on this machine "
            "(it picks 7-bit weights without VNNI)")


def passed_over(engine: Engine, cpu: cpus.CpuInfo) -> str | None:
    """Why `auto` does not take an engine of a precision it wants, in a few words; None when it takes it."""
    problem = distrust(engine)
    if problem:
        return "failed its guard" if "FAILED" in problem else f"not vouched for ({problem})"
    if isa_problem(engine, cpu):
        made_on = (engine.made_by or {}).get("cpu") or {}
        return f"wrong ISA (full-range weights made with {made_on.get('int8_dot')}; this CPU has none)"
    return None


def choose_engine(manifest: Manifest, precision: str, device_kind: str, formats: tuple[str, ...] = (FORMAT_ONNX,),
                  engine_sha256: str | None = None, cpu: cpus.CpuInfo | None = None) -> tuple[Engine, str]:
    """The engine to run and why, among the engines of `formats` (a backend's, best first).

    engine_sha256: run this very engine when the bundle has it (a line profile's). BundleError when
    a precision asked for is unknown or absent, or no engine has a format the backend runs.
    """
    cpu = cpu or cpus.current()
    runnable = sorted((e for e in manifest.engines if e.format in formats), key=lambda e: formats.index(e.format))
    if not runnable:
        raise BundleError(f"this bundle has no engine this backend can run (it runs {', '.join(formats)}; "
                          f"the bundle has: {', '.join(manifest.labels)})")
    pinned = next((e for e in runnable if engine_sha256 and e.sha256 == engine_sha256), None)
    if pinned is not None:
        _warn_isa(pinned, cpu)
        return pinned, "chosen by the line profile"
    if precision != "auto":
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
        engine = next((e for e in runnable if e.precision == precision), None)
        if engine is None:
            elsewhere = " this backend runs" if precision in manifest.precisions else ""
            raise BundleError(f"this bundle has no {precision} engine{elsewhere} (it has: {', '.join(manifest.labels)}); "
                              f"add one with winclip-quantize BUNDLE --precision {precision}")
        problem = distrust(engine)
        if problem:
            log.warning("the %s engine of this bundle is not vouched for: %s; it runs because it was asked for "
                        "by name", precision, problem)
        _warn_isa(engine, cpu)
        return engine, "asked for"
    skipped = []
    for wanted, why in auto_precisions(device_kind):
        for engine in (e for e in runnable if e.precision == wanted):
            if not admitted(engine):
                skipped.append(f"{engine.label} {passed_over(engine, cpu)}")
                continue
            problem = isa_problem(engine, cpu)
            if problem is None:
                return engine, f"auto: {why}"
            log.warning("%s; auto passes it over", problem)
            skipped.append(f"{engine.label} {passed_over(engine, cpu)}")
    fp32 = next((e for e in runnable if e.precision == "fp32"), None)
    if fp32 is not None:
        return fp32, "auto: fp32" + (f" (passed over: {'; '.join(skipped)})" if skipped else "")
    return runnable[0], f"auto: the only engine this backend runs ({runnable[0].label})"


def _warn_isa(engine: Engine, cpu: cpus.CpuInfo) -> None:
    problem = isa_problem(engine, cpu)
    if problem is not None:
        log.warning("%s; running it as asked", problem)
