"""What a live run will do, as data: its cameras, how each camera's frames are judged, its limits and its outputs.

Both ways of starting a run build a `LivePlan`: `winclip-inspect`'s command
line (every --source one camera, all judged alike) and a station file
(station.py: each camera its own object, profile, thresholds, ROI, rate,
overlays, MQTT topic and webhook). The app (app.py) runs a plan; it never reads
the command line or the file itself. Defaults live in line/defaults.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from winclip.runtime.line import defaults
from winclip.runtime.line.sources.base import SourceSpec

CAMERA_SINK_KEYS = {"mqtt_topic": "mqtt", "webhook": "webhook"}  # sink options a camera may set -> its sink


@dataclass(frozen=True)
class PartPlan:
    """How frames are judged: the object's text, a line profile or normal images (WinCLIP+), thresholds.

    Cameras with equal PartPlans share one detector and one operator desk (the
    profile's versions, drift, teaching); every part shares the run's engine.
    """

    object_name: str | None = None
    profile: Path | None = None
    threshold: float | None = None  # given: overrides the profile's
    pixel_threshold: float | None = None
    normal_dir: Path | None = None
    shots: int | None = None

    def describe(self) -> str:
        what = f"object {self.object_name}" if self.object_name else "the bundle's object"
        if self.profile is not None:
            what = f"profile {self.profile}" + (f" ({self.object_name})" if self.object_name else "")
        elif self.normal_dir is not None:
            what += f", normal images {self.normal_dir}" + (f" (first {self.shots})" if self.shots else "")
        given = [f"{name} {value:g}" for name, value in (("threshold", self.threshold),
                                                        ("pixel threshold", self.pixel_threshold)) if value is not None]
        return what + (f"; {', '.join(given)}" if given else "")


@dataclass(frozen=True)
class CameraPlan:
    """One camera: its source (with ROI and rate), how it is judged, its overlays, and its own sink settings."""

    spec: SourceSpec
    part: PartPlan = PartPlan()
    overlays: str | None = None  # anomalous | all | none; None: the run's
    sinks: dict = field(default_factory=dict)  # CAMERA_SINK_KEYS -> value: this camera's events go there instead

    @property
    def name(self) -> str:
        return self.spec.name

    def __hash__(self) -> int:  # the sinks dict keeps the dataclass from hashing itself
        return hash((self.spec, self.part, self.overlays, tuple(sorted(self.sinks.items()))))


@dataclass(frozen=True)
class RunLimits:
    """When a live run stops and how patient it is with sources and sinks."""

    every: int = 1
    max_frames: int | None = None
    duration: float | None = None
    wait_for_source: bool = False
    stall_timeout: float = defaults.STALL_TIMEOUT_S
    flush_timeout: float = defaults.SINK_CLOSE_TIMEOUT_S


@dataclass(frozen=True)
class OutputPlan:
    """Where a live run's results go: the output folder, the sink table's plans, overlays and the live page."""

    out: Path | None = None
    sinks: dict = field(default_factory=dict)  # sink-table name -> what SinkKind.plan returned
    sink_values: dict = field(default_factory=dict)  # the sink options as given (a camera's override re-plans them)
    overlays: str = "none"  # the run's default overlay mode
    keep_days: float | None = None
    keep_gb: float | None = None
    serve: int | None = None  # the live page's port
    host: str = defaults.SERVE_HOST
    token: object = None  # the operator tokens (access.OperatorTokens) or None: a read-only page


@dataclass(frozen=True)
class LivePlan:
    """A whole live run: cameras, limits, outputs; `keep_thresholds` says which thresholds the command line set."""

    cameras: tuple[CameraPlan, ...]
    limits: RunLimits = RunLimits()
    outputs: OutputPlan = OutputPlan()
    station: Path | None = None  # the station file it came from (reloads re-read it)

    @property
    def parts(self) -> list[PartPlan]:
        """Each distinct way of judging, in the order cameras name them."""
        return list(dict.fromkeys(camera.part for camera in self.cameras))

    def overlay_mode(self, camera: CameraPlan) -> str:
        return camera.overlays or self.outputs.overlays
