"""The `Builder` row of the builders' table: everything `winclip-quantize` and `add_engine` need of a builder.

A builder makes one kind of engine (backend, precision, format) from the
bundle's fp32 graph. It brings its own `winclip-quantize` options (click
options, shown in --help) and turns their values into its settings, names the
modules it imports and the distributions that bring them (checked before any
work, named in the missing-extra message, their versions kept in the engine's
record), the files its tool writes beside the engine, and the compute
precision its engine is guarded at where the backend has that choice.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import click

from winclip.calibration.engines.frames import FrameSets
from winclip.runtime.contract import FORMAT_ONNX
from winclip.runtime.errors import MissingExtra, install_hint


@dataclass
class NoSettings:
    """The settings of a builder without knobs."""

    def check(self, layers: int) -> None:
        pass


class Builder(ABC):
    """One row of the builders' table (calibration/engines/__init__.py), keyed by (backend, precision)."""

    backend = ""  # the runtime backend (runtime/backends BACKENDS) that runs and guards its engines
    precision = ""  # a row of runtime/defaults.py PRECISIONS: bundles with it load, and auto knows it
    format = FORMAT_ONNX  # the engine format it writes (runtime/contract.py ENGINE_FORMATS)
    title = ""  # how messages name its engines, e.g. "OpenVINO int8"
    guard_device = "cpu"  # where the guard runs the engine: cpu, or auto (CUDA where there is one)
    settings_type: type = NoSettings
    options: tuple = ()  # click options it adds to winclip-quantize; one shared by two builders is listed by both
    extra = "quantize"  # the install extra that brings its tools
    # module it imports -> the distributions that bring it (versions kept in the engine's record)
    packages: dict[str, tuple[str, ...]] = {}
    # suffixes of the files its tool writes beside the engine, stored with it (an IR's .bin weights); the
    # manifest keeps one such file per engine, as its weights
    side_files: tuple[str, ...] = ()
    # the guard compares with the bundle's fp32 graph on the backend export verified it with against torch
    reference_backend = "onnxruntime"
    reference_packages: tuple[str, ...] = ("onnxruntime", "onnxruntime-gpu")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if len(cls.side_files) > 1:
            raise TypeError(f"{cls.__name__}: the manifest keeps one side file per engine (its weights)")

    def check_tools(self) -> None:
        """MissingExtra, naming the extra to install, unless every module the builder needs imports."""
        for module in self.packages:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MissingExtra(f"{self.title or self.precision} engines need {exc.name or module}: "
                                   f"{install_hint(self.extra)}") from None

    def distributions(self) -> tuple[str, ...]:
        """The distributions whose versions the engine's record keeps: the reference's, then the builder's."""
        return tuple(dict.fromkeys((*self.reference_packages, *(d for ds in self.packages.values() for d in ds))))

    def settings(self, values: dict):
        """The settings from winclip-quantize's option values (every builder's options are in `values`)."""
        return self.settings_type()

    def calibration_frames(self, settings) -> int:
        """How many of the line's frames it calibrates on (0: none; all go to the guard)."""
        return 0

    def describe(self, settings) -> str:
        """The recipe in a few words (logged, and kept in the guard's record); "" when there is nothing to say."""
        return ""

    @abstractmethod
    def make(self, fp32: Path, out: Path, settings, frames: FrameSets, input_name: str) -> dict | None:
        """Write the engine (and its side files, beside it) at `out`; return notes for its record, or None."""

    @abstractmethod
    def record(self, settings) -> dict:
        """The settings as the engine's record keeps them (with what this CPU decided)."""

    def guard_compute(self) -> str | None:
        """The compute precision the guard runs the engine at, where its backend has that choice; None: no choice."""
        return None

    def failure_hint(self) -> str | None:
        """What to do instead when the guard fails, or None."""
        return None


def collect_options(builders) -> list:
    """Every builder's click options, in table order, each once (two builders may list the same option)."""
    return list(dict.fromkeys(option for builder in builders for option in builder.options))


def option_names(options) -> list[str]:
    """The parameter names the click options declare (to check that two different options never share one)."""
    holder = click.command()(lambda **_: None)
    for option in options:
        holder = option(holder)
    return [param.name for param in holder.params]
