"""`--backend auto`: measure the local backends once on this machine, run the fastest, remember the choice.

The candidates are every engine of the bundle that a local backend whose
library is installed can run, under the same rules as `--precision`: with
`auto`, the admitted reduced-precision engines for the device (a guarded int8 on
the CPU) and fp32 only when there is none; with a precision or a line profile's
engine asked for, those only. Each candidate is opened, run once to warm up and
timed for a few calls on a frame-sized input; the fastest runs. The choice is
kept in the user's cache under a key made of the candidates' engine sha256s,
the backends' library versions, the CPU model and its flags, the device and the
thread count, so a new engine, library, CPU or setting measures again and
nothing else does. A remote server (a Triton client) is never chosen by
measuring: only the backends of `MEASURED` are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import import_module

import numpy as np

from winclip.runtime import cpu as cpus
from winclip.runtime.atomic import write_atomic
from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.backends.policy import AUTO_PRECISIONS, admitted, isa_problem
from winclip.runtime.cache import cache_path
from winclip.runtime.contract import Engine
from winclip.runtime.errors import BundleError, MissingExtra, WinclipError, first_line

log = logging.getLogger(__name__)

# local inference libraries auto measures, and the module whose __version__ keys the remembered choice
MEASURED = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
WARMUP_CALLS = 1
TIMED_CALLS = 3


@dataclass(frozen=True)
class Candidate:
    """One engine on one backend."""

    backend: str
    engine: Engine

    @property
    def label(self) -> str:
        return f"{self.backend} {self.engine.label}"


def candidates(bundle, options: BackendOptions) -> list[Candidate]:
    """What auto measures for `options`, from the backends installed here."""
    from winclip.runtime.backends import backend_class

    manifest, machine = bundle.manifest, cpus.current()
    kind = "cuda" if options.device == "cuda" else "cpu"
    found = []
    for name in MEASURED:
        try:
            cls = backend_class(name)
        except MissingExtra as exc:
            log.debug("auto: %s", exc)
            continue
        runnable = [e for e in manifest.engines if e.format in cls.formats]
        if options.engine_sha256 and any(e.sha256 == options.engine_sha256 for e in runnable):
            chosen = [e for e in runnable if e.sha256 == options.engine_sha256]
        elif options.precision != "auto":
            chosen = [e for e in runnable if e.precision == options.precision]
        else:
            wanted = [p for p, _ in AUTO_PRECISIONS.get(kind, ())]
            chosen = [e for e in runnable if e.precision in wanted and admitted(e) and isa_problem(e, machine) is None]
            chosen = chosen or [e for e in runnable if e.precision == "fp32"]
        found += [Candidate(name, e) for e in chosen]
    if options.precision == "auto" and not options.engine_sha256 and any(c.engine.precision != "fp32" for c in found):
        found = [c for c in found if c.engine.precision != "fp32"]  # fp32 only where nothing guarded is faster
    return found


def choice_key(found: list[Candidate], options: BackendOptions) -> str:
    """What a remembered choice is valid for: the candidates, the libraries, the CPU, the settings."""
    machine = cpus.current()
    versions = {name: getattr(import_module(module), "__version__", "?") for name, module in MEASURED.items()
                if any(c.backend == name for c in found)}
    what = {"candidates": sorted(f"{c.backend}:{c.engine.sha256}" for c in found), "versions": versions,
            "cpu": machine.model, "flags": sorted(machine.flags), "device": options.device,
            "precision": options.precision, "threads": options.threads,
            "inference_precision": options.inference_precision}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _open(bundle, candidate: Candidate, options: BackendOptions) -> Backend:
    from winclip.runtime.backends import backend_class

    return backend_class(candidate.backend).open(bundle, replace(options, engine_sha256=candidate.engine.sha256))


def measure(backend: Backend, batch: np.ndarray, calls: int = TIMED_CALLS) -> float:
    """Median seconds of a call on `batch`, after a warm-up call."""
    for _ in range(WARMUP_CALLS):
        backend.run(batch)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        backend.run(batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _remembered(path, found: list[Candidate]) -> tuple[Candidate, dict] | None:
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        winner = next(c for c in found if (c.backend, c.engine.sha256) == (record["backend"], record["engine_sha256"]))
        return winner, record
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None  # unreadable or about other engines: measured again


def _summary(seconds: dict[str, float]) -> str:
    return ", ".join(f"{label} {1000 * s:.1f} ms" for label, s in sorted(seconds.items(), key=lambda kv: kv[1]))


class MeasuredChoice:
    """The table row "auto": `open` returns the opened Backend of the fastest candidate on this machine."""

    name = "auto"

    @classmethod
    def open(cls, bundle, options: BackendOptions) -> Backend:
        found = candidates(bundle, options)
        if not found:
            raise BundleError("auto found no engine of this bundle that an installed backend can run "
                              f"(the bundle has: {', '.join(bundle.manifest.labels)}; backends tried: "
                              f"{', '.join(MEASURED)})")
        if len(found) == 1:
            backend = _open(bundle, found[0], options)
            backend.reason = f"auto: the only candidate here ({found[0].label})"
            return backend
        path = cache_path(f"auto-{choice_key(found, options)}.json", options.cache_dir) if options.cache else None
        remembered = _remembered(path, found)
        if remembered is not None:
            winner, record = remembered
            backend = _open(bundle, winner, options)
            backend.reason = (f"auto: the fastest when measured on this machine on {record.get('measured', '?')[:10]} "
                              f"({_summary(record.get('seconds', {}))} per call)")
            return backend
        return cls._measure(bundle, found, options, path)

    @classmethod
    def _measure(cls, bundle, found: list[Candidate], options: BackendOptions, path) -> Backend:
        from winclip.runtime.preprocess import Preprocessor

        log.info("auto: timing %d engines on this machine once (%s); the choice is remembered",
                 len(found), ", ".join(c.label for c in found))
        h, w = bundle.manifest.preprocess.input_size
        frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        batch = Preprocessor(bundle.manifest.preprocess)([frame])
        seconds, best, best_s = {}, None, float("inf")
        for candidate in found:
            try:
                backend = _open(bundle, candidate, options)
                took = measure(backend, batch)
            except WinclipError as exc:
                log.warning("auto: %s cannot run here: %s", candidate.label, first_line(exc))
                continue
            seconds[candidate.label] = round(took, 4)
            if took < best_s:
                if best is not None:
                    best[1].close()
                best, best_s = (candidate, backend), took
            else:
                backend.close()
        if best is None:
            raise BundleError("auto: none of the engines it measured could run here")
        winner, backend = best
        backend.reason = f"auto: the fastest of {len(seconds)} measured on this machine ({_summary(seconds)} per call)"
        log.info("auto: %s is the fastest here (%s per call)", winner.label, _summary(seconds))
        if path is not None:
            record = {"backend": winner.backend, "engine_sha256": winner.engine.sha256, "engine": winner.engine.label,
                      "seconds": seconds, "cpu": cpus.current().describe(),
                      "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            try:
                write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
            except OSError:
                pass  # remembering only saves the next start the measuring
        return backend
