"""Which engine of a bundle runs where: the `--precision auto` policy, as a table, and whom it trusts.

A precision asked for by name runs if the bundle has it (with a warning when
its record does not vouch for it). `auto` walks the row of the device the
backend runs on and takes the first precision whose engine is *vouched for*:
made by this project's tools, and whose recorded accuracy guard passed limits
at least as strict as today's defaults. Otherwise fp32, the engine the export
verified against torch, and failing that the bundle's only engine.
"""

from __future__ import annotations

import logging

from winclip.runtime.contract import Engine, Manifest
from winclip.runtime.defaults import GUARD_LIMITS, PRECISIONS
from winclip.runtime.errors import BundleError

log = logging.getLogger(__name__)

# device kind -> precisions `auto` tries, in order, and the words that say why
AUTO_PRECISIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "cuda": (("fp16", "fp16 on CUDA"),),
    "cpu": (("int8", "guarded int8 on CPU"),),
}
TRUSTED_TOOLS = ("winclip-export", "winclip-quantize")  # made_by.tool of the engines this project makes


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


def choose_engine(manifest: Manifest, precision: str, device_kind: str) -> tuple[Engine, str]:
    """The engine to run and why; BundleError when a precision asked for is unknown or absent."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
        try:
            engine = manifest.engine(precision)
        except KeyError:
            raise BundleError(f"this bundle has no {precision} engine (it has: {', '.join(manifest.precisions)}); "
                              f"add one with winclip-quantize BUNDLE --precision {precision}") from None
        problem = distrust(engine)
        if problem:
            log.warning("the %s engine of this bundle is not vouched for: %s; it runs because it was asked for "
                        "by name", precision, problem)
        return engine, "asked for"
    by_precision = {e.precision: e for e in manifest.engines}
    for wanted, why in AUTO_PRECISIONS.get(device_kind, ()):
        if admitted(by_precision.get(wanted)):
            return by_precision[wanted], f"auto: {why}"
    if "fp32" in by_precision:
        return by_precision["fp32"], "auto: fp32"
    return manifest.engines[0], f"auto: the bundle's only engine ({manifest.engines[0].precision})"
