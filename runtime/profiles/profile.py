"""The line profile: what this line's good part looks like and where its thresholds sit.

A directory apart from the engine bundle (one bundle serves many lines), data
only: `profile.json`, meant to be read and edited by people (a threshold changed
by hand is accepted), and the WinCLIP+ memory arrays as .npy files whose sha256
the JSON holds (an array that fails its checksum or shape is refused). A
profile is bound to the engine graph and the object it was made with; the
runtime refuses it for any other, saying which. Written by `winclip-calibrate`
(winclip.calibration) through `save`, read here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from winclip.runtime.atomic import staged_folder
from winclip.runtime.bundle import resolve_inside
from winclip.runtime.memory import FewShotMemory, FewShotMemoryError
from winclip.runtime.profiles.layout import PROFILE_NAME, VERSIONS_NAME, ProfileError, find_version, keeps_versions
from winclip.runtime.validation import Node, SchemaError, check_float, read_json

log = logging.getLogger(__name__)

PROFILE_FORMAT = "winclip-edge-line-profile"
PROFILE_VERSION = 1


@dataclass
class LineProfile:
    """A checked line profile: the few-shot memory, thresholds, and the record of how they were made."""

    memory: FewShotMemory
    image_threshold: float | None
    pixel_threshold: float | None
    record: dict = field(default_factory=dict)  # everything else in profile.json, kept as written

    @property
    def object_name(self) -> str:
        return self.memory.key.object_name

    @property
    def precision(self) -> str:
        return self.memory.key.precision

    @classmethod
    def load(cls, root: str | Path) -> "LineProfile":
        """Read and check a profile folder; one that keeps versions (versions.py) gives its current
        version. ProfileError with a one-line reason otherwise."""
        root = Path(root)
        if keeps_versions(root):
            root = find_version(root).folder  # the current version's own folder, a profile folder as below
        try:
            profile = cls._load(root)
        except OSError as exc:  # an unreadable folder: still one line, still ours
            raise ProfileError(f"cannot read the line profile {root}: {exc.strerror or exc}") from None
        for kind, value in (("image", profile.image_threshold), ("pixel", profile.pixel_threshold)):
            if value is None:  # a hand edit to null: say so at every load, for it changes what the line does
                log.warning("the line profile %s has no %s threshold (thresholds.%s.value is null): %s", root, kind,
                            kind, "no frame is ever judged anomalous" if kind == "image" else "no defect regions")
        return profile

    @classmethod
    def _load(cls, root: Path) -> "LineProfile":
        path = root / PROFILE_NAME
        if not root.is_dir() or not path.exists():
            raise ProfileError(f"{root} is not a line profile: {PROFILE_NAME} is missing")
        resolve_inside(root, PROFILE_NAME, "line profile", ProfileError)  # no symlink out, as for bundles
        try:
            data = read_json(path, "line profile")
            node = Node(data, "")
            if node.raw("format", None) != PROFILE_FORMAT:
                raise SchemaError(f"not a {PROFILE_FORMAT} (field format)")
            if node.raw("schema_version", None) != PROFILE_VERSION or isinstance(node.raw("schema_version"), bool):
                raise SchemaError(f"profile schema version {str(node.raw('schema_version', None))[:20]} is not "
                                  f"supported (this winclip-edge reads version {PROFILE_VERSION}); re-run winclip-calibrate")
            thresholds = node.node("thresholds")
            image = _threshold(thresholds, "image")
            pixel = _threshold(thresholds, "pixel")
            memory = FewShotMemory.load(root, node.raw("memory"), where="memory")
        except (SchemaError, FewShotMemoryError) as exc:
            raise ProfileError(f"{path}: {exc}") from None
        return cls(memory=memory, image_threshold=image, pixel_threshold=pixel, record=data)

    def save(self, root: str | Path, force: bool = False, extra=None) -> Path:
        """Write the profile as ROOT, atomically (a temporary directory beside it, then renamed).

        extra: a function that writes more files into the folder and returns what to add to the record.
        """
        root = Path(root).resolve()
        ours = lambda p: (p / PROFILE_NAME).is_file() or (p / VERSIONS_NAME).is_file()  # noqa: E731
        with staged_folder(root, force, ours=ours) as tmp:
            self.save_into(tmp, extra)
        return root

    def save_into(self, folder: Path, extra=None) -> None:
        """Write profile.json and the memory arrays (and what `extra` writes) into an existing folder."""
        record = dict(self.record)
        if extra is not None:
            record.update(extra(folder))
        record.update({"format": PROFILE_FORMAT, "schema_version": PROFILE_VERSION,
                       "created": record.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "memory": self.memory.save(folder)})
        thresholds = dict(record.get("thresholds", {}))
        for kind, value in (("image", self.image_threshold), ("pixel", self.pixel_threshold)):
            thresholds[kind] = {**thresholds.get(kind, {}), "value": value}
        record["thresholds"] = thresholds
        (folder / PROFILE_NAME).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        self.record = record


def _threshold(thresholds: Node, kind: str) -> float | None:
    if not thresholds.has(kind) or thresholds.raw(kind) is None:
        return None
    entry = thresholds.node(kind)
    value = entry.raw("value", None)
    return None if value is None else check_float(value, f"thresholds.{kind}.value", 0.0, 1.0)
