"""`--backend auto`: measure the local backends once on this machine, run the fastest, remember the choice.

The candidates are every engine of the bundle that a local backend whose
library is installed can run, under the same rules as `--precision`: with
`auto`, the admitted reduced-precision engines for the device (a guarded int8 on
the CPU) and fp32 only when there is none; with a precision or a line profile's
engine asked for, those only. Every engine passed over is named with the reason
(library missing, not vouched for, failed its guard, wrong ISA for this CPU).

Measuring is short and robust to a busy machine: every candidate is opened and
run once to warm up, then timed in interleaved rounds (one call of each per
round, so a burst of load hits all of them alike) on a frame-sized input, for at
least MIN_ROUNDS and at most ROUNDS rounds or until BUDGET_S has passed; the
lowest median wins. On ViT-B-16+ that is about 2 x 4 calls, under 10 s on a
quiet 2-core box. The choice, the medians and the load average at the time are
kept in the user's cache under a key made of the candidates' engine sha256s,
the backends' library versions, the CPU model and its flags, the device and the
thread count, so a new engine, library, CPU or setting measures again. A later
start times one call of the remembered engine: SLOWER_THAN_RECORDED times its
recorded median or more (measured while the machine was busy, or since slowed)
measures again, and so does `--remeasure`. A remote server (a Triton client) is
never chosen by measuring: only the rows of `BACKENDS` marked `measured` are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import import_module

import numpy as np

from winclip.runtime import cpu as cpus
from winclip.runtime.atomic import write_atomic
from winclip.runtime.backends.base import Backend, BackendOptions
from winclip.runtime.backends.policy import auto_precisions, passed_over
from winclip.runtime.cache import cache_path
from winclip.runtime.contract import Engine
from winclip.runtime.errors import BundleError, MissingExtra, WinclipError, first_line

log = logging.getLogger(__name__)

MIN_ROUNDS, ROUNDS = 2, 3  # interleaved timing rounds: at least, at most
BUDGET_S = 10.0  # no new round starts after this long (the warm-up included)
SLOWER_THAN_RECORDED = 2.0  # a remembered engine this many times slower than its record: measured again


@dataclass(frozen=True)
class Candidate:
    """One engine on one backend."""

    backend: str
    engine: Engine

    @property
    def label(self) -> str:
        return f"{self.backend} {self.engine.label}"


def candidates(bundle, options: BackendOptions) -> tuple[list[Candidate], list[str]]:
    """What auto measures for `options`, from the backends installed here, and why each other engine is not."""
    from winclip.runtime.backends import backend_class, measured_backends

    manifest, machine = bundle.manifest, cpus.current()
    kind = "cuda" if options.device == "cuda" else "cpu"
    found, skipped = [], []
    for name in measured_backends():
        try:
            cls = backend_class(name)
        except MissingExtra as exc:
            log.debug("auto: %s", exc)
            skipped.append(f"{name}: library missing")
            continue
        runnable = [e for e in manifest.engines if e.format in cls.formats]
        if options.engine_sha256 and any(e.sha256 == options.engine_sha256 for e in runnable):
            chosen = [e for e in runnable if e.sha256 == options.engine_sha256]
        elif options.precision != "auto":
            chosen = [e for e in runnable if e.precision == options.precision]
        else:
            wanted = [p for p, _ in auto_precisions(kind)]
            chosen = []
            for engine in (e for e in runnable if e.precision in wanted):
                why = passed_over(engine, machine)
                if why is None:
                    chosen.append(engine)
                else:
                    skipped.append(f"{name} {engine.label}: {why}")
            chosen = chosen or [e for e in runnable if e.precision == "fp32"]
        found += [Candidate(name, e) for e in chosen]
    if options.precision == "auto" and not options.engine_sha256 and any(c.engine.precision != "fp32" for c in found):
        found = [c for c in found if c.engine.precision != "fp32"]  # fp32 only where nothing guarded is faster
    return found, skipped


def choice_key(found: list[Candidate], options: BackendOptions) -> str:
    """What a remembered choice is valid for: the candidates, the libraries, the CPU, the settings that change speed.

    The precision asked for is not part of it: it only narrows the candidates, which are (so a line profile's int8
    engine reuses the choice that `winclip-calibrate --precision auto` measured between the same engines)."""
    from winclip.runtime.backends import BACKENDS

    machine = cpus.current()
    versions = {name: getattr(import_module(BACKENDS[name].library), "__version__", "?")
                for name in sorted({c.backend for c in found}) if BACKENDS[name].library}
    what = {"candidates": sorted(f"{c.backend}:{c.engine.sha256}" for c in found), "versions": versions,
            "cpu": machine.model, "flags": sorted(machine.flags), "device": options.device, "threads": options.threads,
            "inference_precision": options.inference_precision}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _open(bundle, candidate: Candidate, options: BackendOptions) -> Backend:
    from winclip.runtime.backends import backend_class

    return backend_class(candidate.backend).open(bundle, replace(options, engine_sha256=candidate.engine.sha256))


def time_call(backend: Backend, batch: np.ndarray) -> float:
    """Seconds one call of `backend` on `batch` takes."""
    t = time.perf_counter()
    backend.run(batch)
    return time.perf_counter() - t


def measure(opened: dict[str, Backend], batch: np.ndarray, start: float | None = None) -> dict[str, float]:
    """Median seconds per call of each opened, warmed-up backend (by label), in interleaved rounds; the budget
    counts from `start` (time.perf_counter(); default: now)."""
    start = time.perf_counter() if start is None else start
    times: dict[str, list[float]] = {label: [] for label in opened}
    for round_ in range(ROUNDS):
        if round_ >= MIN_ROUNDS and time.perf_counter() - start > BUDGET_S:
            break
        for label, backend in opened.items():
            times[label].append(time_call(backend, batch))
    return {label: statistics.median(t) for label, t in times.items()}


def load_average() -> float | None:
    """The 1-minute load average, recorded with a choice (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


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
        from winclip.runtime.backends import measured_backends

        found, skipped = candidates(bundle, options)
        passed = f"; passed over: {'; '.join(skipped)}" if skipped else ""
        if not found:
            raise BundleError("auto found no engine of this bundle that an installed backend can run "
                              f"(the bundle has: {', '.join(bundle.manifest.labels)}; backends tried: "
                              f"{', '.join(measured_backends())}{passed})")
        if len(found) == 1:
            backend = _open(bundle, found[0], options)
            backend.reason = f"auto: the only candidate here ({found[0].label}){passed}"
            return backend
        path = cache_path(f"auto-{choice_key(found, options)}.json", options.cache_dir) if options.cache else None
        remembered = None if options.remeasure else _remembered(path, found)
        batch = _frame_batch(bundle)
        if remembered is not None:
            winner, record = remembered
            backend = _open(bundle, winner, options)
            backend.run(batch)  # warm-up, then one call against the record
            now, then = time_call(backend, batch), record.get("seconds", {}).get(winner.label)
            if not isinstance(then, (int, float)) or now < SLOWER_THAN_RECORDED * then:
                backend.reason = (f"auto: the fastest when measured on this machine on "
                                  f"{str(record.get('measured', '?'))[:10]} ({_summary(record.get('seconds', {}))} "
                                  f"per call){passed}")
                return backend
            log.info("auto: %s took %.1f ms now against %.1f ms when measured: measuring again",
                     winner.label, 1000 * now, 1000 * then)
            backend.close()
        return cls._measure(bundle, found, options, path, batch, passed)

    @classmethod
    def _measure(cls, bundle, found: list[Candidate], options: BackendOptions, path, batch, passed: str) -> Backend:
        log.info("auto: timing %d engines on this machine (%s), %d-%d interleaved rounds within about %.0f s; "
                 "the choice is remembered", len(found), ", ".join(c.label for c in found), MIN_ROUNDS, ROUNDS,
                 BUDGET_S)
        opened: dict[str, tuple[Candidate, Backend]] = {}
        start = time.perf_counter()
        for candidate in found:
            backend = None
            try:
                backend = _open(bundle, candidate, options)
                backend.run(batch)  # the warm-up: first calls pay for lazy initialisation and cold caches
                opened[candidate.label] = (candidate, backend)
            except WinclipError as exc:
                log.warning("auto: %s cannot run here: %s", candidate.label, first_line(exc))
                if backend is not None:
                    backend.close()
        if not opened:
            raise BundleError("auto: none of the engines it measured could run here")
        seconds = {label: round(s, 4)
                   for label, s in measure({k: b for k, (_, b) in opened.items()}, batch, start).items()}
        best = min(seconds, key=seconds.get)
        for label, (_, other) in opened.items():
            if label != best:
                other.close()
        winner, backend = opened[best]
        load = load_average()
        backend.reason = (f"auto: the fastest of {len(seconds)} measured on this machine ({_summary(seconds)} per call"
                          f"{f', load {load}' if load is not None else ''}){passed}")
        log.info("auto: %s is the fastest here (%s per call)", winner.label, _summary(seconds))
        if path is not None:
            record = {"backend": winner.backend, "engine_sha256": winner.engine.sha256, "engine": winner.engine.label,
                      "seconds": seconds, "load_average": load, "cpu": cpus.current().describe(),
                      "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            try:
                write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
            except OSError:
                pass  # remembering only saves the next start the measuring
        return backend


def _frame_batch(bundle) -> np.ndarray:
    """A frame-sized preprocessed batch of one (random pixels: speed does not depend on them)."""
    from winclip.runtime.preprocess import Preprocessor

    h, w = bundle.manifest.preprocess.input_size
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Preprocessor(bundle.manifest.preprocess)([frame])
