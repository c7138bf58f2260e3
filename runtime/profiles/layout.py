"""A line profile folder's layout: its file names, ProfileError, and which version is current.

A profile folder holds profile.json and its arrays; one that keeps versions
(versions.py) holds versions.json and a folder per version instead, each itself
a profile folder. Reading versions.json lives here, below both profile.py and
versions.py, so that loading a profile finds its current version without
importing the writer that makes versions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from winclip.runtime.errors import BundleError
from winclip.runtime.validation import Node, SchemaError, read_json

PROFILE_NAME = "profile.json"
VERSIONS_NAME = "versions.json"  # a profile that keeps versions
VERSIONS_FORMAT = "winclip-edge-line-profile-versions"
VERSIONS_SCHEMA = 1
LOCK_NAME = ".lock"
VERSION_FOLDER = re.compile(r"v([1-9][0-9]{0,8})")


class ProfileError(BundleError):
    """A line profile that cannot be used here, with a one-line reason."""


@dataclass(frozen=True)
class Version:
    """One version of a profile: its number, folder and record (who, when, why, action, parent, thresholds)."""

    number: int
    folder: Path
    entry: dict


def keeps_versions(root: Path) -> bool:
    """Whether the profile folder keeps versions (has versions.json). A folder the OS will not let us look
    into is a ProfileError (Path.exists raises PermissionError there), so the API never leaks an OSError."""
    try:
        os.lstat(Path(root) / VERSIONS_NAME)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise ProfileError(f"cannot read the line profile {root}: {exc.strerror or exc}") from None
    return True


def read_versions(root: Path) -> dict:
    """A profile folder's versions.json, checked; a single-version profile reads as its one version."""
    if not keeps_versions(root):
        if not (root / PROFILE_NAME).is_file():
            raise ProfileError(f"{root} is not a line profile: {PROFILE_NAME} is missing")
        return {"format": VERSIONS_FORMAT, "schema_version": VERSIONS_SCHEMA, "current": 1,
                "versions": [{"version": 1, "folder": ".", "parent": None, "action": "calibrate",
                              "who": "winclip-calibrate", "why": "the profile as calibrated", "created": None}],
                "log": []}
    path = root / VERSIONS_NAME
    try:
        if path.is_symlink() or not path.is_file():
            raise SchemaError("not a regular file")
        data = read_json(path, "profile versions")
        node = Node(data, "")
        if node.raw("format", None) != VERSIONS_FORMAT:
            raise SchemaError(f"not a {VERSIONS_FORMAT} (field format)")
        if node.raw("schema_version", None) != VERSIONS_SCHEMA:
            raise SchemaError(f"versions schema {str(node.raw('schema_version', None))[:20]} is not supported")
        numbers = set()
        for i, raw in enumerate(node.list("versions", 1, 1 << 16)):
            entry = Node(raw, f"versions[{i}]")
            number = entry.int("version", 1, 10 ** 9)
            folder = entry.str("folder", max_len=16)
            if folder != f"v{number}":
                raise SchemaError(f"versions[{i}].folder must be v{number}")
            numbers.add(number)
        current = node.int("current", 1, 10 ** 9)
        if current not in numbers:
            raise SchemaError(f"current version {current} is not listed")
        node.list("log", 0, 1 << 20)
    except SchemaError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    except OSError as exc:  # a folder we may not look into: still one line, still ours
        raise ProfileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data


def find_version(root: Path, number: int | None = None, data: dict | None = None) -> Version:
    """A version of the profile at ROOT (the current one when `number` is None)."""
    data = data or read_versions(root)
    number = data["current"] if number is None else number
    for entry in data["versions"]:
        if entry["version"] == number:
            folder = root if entry["folder"] == "." else root / entry["folder"]
            if entry.get("pruned") or not (folder / PROFILE_NAME).is_file():
                raise ProfileError(f"version {number} of {root} is no longer on disk")
            return Version(number, folder, entry)
    raise ProfileError(f"{root} has no version {number}")
