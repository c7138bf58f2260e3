"""Which engine of a bundle runs where: the `--precision auto` policy, as a table.

A precision asked for by name runs if the bundle has it. `auto` walks the row
of the device the backend runs on and takes the first precision the bundle has
an admitted engine for (one added without --accept-degraded), falling back to
fp32 and then to whatever single engine the bundle holds.
"""

from __future__ import annotations

from winclip.runtime.contract import Engine, Manifest
from winclip.runtime.defaults import PRECISIONS
from winclip.runtime.errors import BundleError

# device kind -> precisions `auto` tries, in order, and the words that say why
AUTO_PRECISIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "cuda": (("fp16", "fp16 on CUDA"),),
    "cpu": (("int8", "guarded int8 on CPU"),),
}


def admitted(engine: Engine | None) -> bool:
    """An engine auto may pick: present, and not added despite a failed accuracy guard."""
    return engine is not None and not engine.accepted_degraded


def choose_engine(manifest: Manifest, precision: str, device_kind: str) -> tuple[Engine, str]:
    """The engine to run and why; BundleError when a precision asked for is unknown or absent."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
        try:
            return manifest.engine(precision), "asked for"
        except KeyError:
            raise BundleError(f"this bundle has no {precision} engine (it has: {', '.join(manifest.precisions)}); "
                              f"add one with winclip-quantize BUNDLE --precision {precision}") from None
    by_precision = {e.precision: e for e in manifest.engines}
    for wanted, why in AUTO_PRECISIONS.get(device_kind, ()):
        if admitted(by_precision.get(wanted)):
            return by_precision[wanted], f"auto: {why}"
    if "fp32" in by_precision:
        return by_precision["fp32"], "auto: fp32"
    return manifest.engines[0], f"auto: the bundle's only engine ({manifest.engines[0].precision})"
