"""Versions of a line profile: every change a new folder, the previous ones kept and loadable.

A profile that has been changed after `winclip-calibrate` made it (a part taught
on the live page, `winclip-calibrate --add-normal`) is a folder of versions:

    profiles/line3/
      versions.json   which version is current, and per version who made it, when, why and how
      v1/             the profile as calibrated: itself a complete line profile
      v2/             one change later: memory, thresholds, reference set, the added images
      .lock           writers take it (flock) for the whole read-change-write

`LineProfile.load(profiles/line3)` loads the current version and
`LineProfile.load(profiles/line3/v1)` any other. A single-version profile (a
folder with profile.json, as winclip-calibrate writes it) becomes v1 at its
first change. Undo makes the version the current one was made from current
again; nothing is deleted by it. A version folder appears whole or not at all
(staged, then renamed) and versions.json is replaced atomically, so a reader
never sees a half-made version; a folder left by a writer that died before
naming it in versions.json is removed at the next change, with a warning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from winclip.runtime.atomic import staged_folder, write_atomic
from winclip.runtime.defaults import PROFILE_KEEP_VERSIONS
from winclip.runtime.profiles.layout import (LOCK_NAME, PROFILE_NAME, VERSION_FOLDER, VERSIONS_NAME, ProfileError,
                                            Version, find_version, keeps_versions, read_versions)
from winclip.runtime.profiles.profile import LineProfile

log = logging.getLogger(__name__)

MAX_TEXT = 500  # characters of who / why kept
LOG_MAX = 2000  # changes the log keeps (the newest)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def clean_text(value, default: str) -> str:
    """A who/why as people typed it: printable, one line, bounded."""
    text = "" if value is None else str(value)
    text = "".join(c if c.isprintable() else " " for c in text).strip()[:MAX_TEXT]
    return text or default


@dataclass
class Change:
    """What a change makes: the new profile, extra files for its folder, and its record in versions.json.

    `write(folder)` adds files beside profile.json (the reference set, the taught images)
    and returns what to add to the profile's record.
    """

    profile: LineProfile
    action: str
    who: str
    why: str
    write: Callable[[Path], dict] | None = None
    details: dict | None = None  # kept in the version's entry (what was added, from where)


def versioned_parent(folder: Path) -> Path | None:
    """The versioned profile a folder is a version of, or None."""
    folder = Path(folder)
    if VERSION_FOLDER.fullmatch(folder.name) and keeps_versions(folder.parent):
        return folder.parent
    return None


class ProfileStore:
    """A line profile folder as a sequence of versions: load, change, undo, under a writer's lock."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        inside = versioned_parent(self.root)
        if inside is not None:
            raise ProfileError(f"{self.root} is version {self.root.name[1:]} of the profile {inside}: change "
                               f"{inside} itself (its versions stay loadable)")

    # --- reading
    @property
    def versioned(self) -> bool:
        return keeps_versions(self.root)

    def read(self) -> dict:
        """versions.json, checked; a single-version profile reads as its one version."""
        return read_versions(self.root)

    def version(self, number: int | None = None, data: dict | None = None) -> Version:
        """A version (the current one when `number` is None)."""
        return find_version(self.root, number, data)

    def load(self, number: int | None = None) -> tuple[LineProfile, Version]:
        version = self.version(number)
        return LineProfile.load(version.folder), version

    def history(self) -> dict:
        """versions.json as people read it: current, the versions (newest first) and the log."""
        data = self.read()
        return {"current": data["current"], "versions": list(reversed(data["versions"])), "log": data.get("log", [])}

    # --- writing
    @contextmanager
    def locked(self):
        """The writers' lock: one process or thread at a time reads, changes and writes the profile."""
        if not self.root.is_dir():
            raise ProfileError(f"{self.root} is not a line profile folder")
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def change(self, make: Callable[[LineProfile, Version], Change]) -> Version:
        """Under the lock: load the current version, let `make` build the change from it, write it as the
        next version and make it current. The new Version is returned."""
        with self.locked():
            data = self._clean() if self.versioned else self.read()
            base = self.version(data=data)
            current = LineProfile.load(base.folder)
            change = make(current, base)
            if not self.versioned:  # only now that the change is made: a refused change leaves the folder as it was
                data = self._convert(data, current.record)
                base = self.version(data=data)
            number = max([e["version"] for e in data["versions"]] + self._folders()) + 1
            folder = self.root / f"v{number}"
            profile = change.profile
            with staged_folder(folder) as tmp:
                profile.save_into(tmp, change.write)
                _share_unchanged(tmp, base.folder)
            entry = {"version": number, "folder": folder.name, "parent": base.number, "created": now_iso(),
                     "action": change.action, "who": clean_text(change.who, "unknown"),
                     "why": clean_text(change.why, ""),
                     "thresholds": {"image": profile.image_threshold, "pixel": profile.pixel_threshold},
                     **({"details": change.details} if change.details else {})}
            data["versions"].append(entry)
            data["current"] = number
            data.setdefault("log", []).append({"time": entry["created"], "action": change.action, "from": base.number,
                                               "to": number, "who": entry["who"], "why": entry["why"]})
            self._prune(data)
            self._write(data)
            return Version(number, folder, entry)

    def undo(self, who: str, why: str = "") -> tuple[Version, Version]:
        """Take back the last change: after "use version K", the version that was in use before it; else the
        version the current one was made from. (the one left, the one now current)."""
        with self.locked():
            data = self.read()
            if not self.versioned or data["current"] == 1 and len(data["versions"]) == 1:
                raise ProfileError(f"{self.root} has only the version it was calibrated as: nothing to undo")
            left = self.version(data=data)
            last = (data.get("log") or [{}])[-1]
            if last.get("action") == "use" and last.get("to") == left.number and isinstance(last.get("from"), int):
                back = self.version(last["from"], data)  # ProfileError when it is no longer on disk
            else:
                parent = left.entry.get("parent")
                if parent is None:
                    raise ProfileError(f"version {left.number} of {self.root} is its first: nothing to undo")
                back = self.version(parent, data)
            self._switch(data, "undo", left, back, who, why)
            return left, back

    def use(self, number: int, who: str, why: str = "") -> tuple[Version, Version]:
        """Make any kept version current again (a "use" entry in the log; nothing is deleted): (the one left,
        the one now current)."""
        with self.locked():
            data = self.read()
            if not self.versioned:
                raise ProfileError(f"{self.root} has only the version it was calibrated as: nothing to choose")
            left = self.version(data=data)
            if number == left.number:
                raise ProfileError(f"version {number} of {self.root} is already in use")
            chosen = self.version(number, data)  # ProfileError when unknown or pruned
            self._switch(data, "use", left, chosen, who, why)
            return left, chosen

    def _switch(self, data: dict, action: str, left: Version, to: Version, who: str, why: str) -> None:
        """Make `to` current, logged as `action` (undo or use) by `who`; written under the caller's lock."""
        data["current"] = to.number
        data.setdefault("log", []).append({"time": now_iso(), "action": action, "from": left.number, "to": to.number,
                                           "who": clean_text(who, "unknown"), "why": clean_text(why, "")})
        self._write(data)

    # --- the parts
    def _folders(self) -> list[int]:
        return [int(m.group(1)) for p in self.root.iterdir() if (m := VERSION_FOLDER.fullmatch(p.name)) and p.is_dir()]

    def _write(self, data: dict) -> None:
        data["log"] = data.get("log", [])[-LOG_MAX:]
        write_atomic(self.root / VERSIONS_NAME, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode(),
                     sync=True)

    def _convert(self, data: dict, record: dict) -> dict:
        """A single-version profile (its `record`, already loaded) becomes v1 of one (its files hard-linked into
        v1/, then removed from the root)."""
        moved = [p for p in self.root.iterdir() if p.is_file() and not p.is_symlink() and p.name != LOCK_NAME]
        if (self.root / "v1").exists():
            shutil.rmtree(self.root / "v1")  # a conversion that died before versions.json named it
        with staged_folder(self.root / "v1") as tmp:
            for path in moved:
                _link_or_copy(path, tmp / path.name)
        entry = data["versions"][0]
        entry.update(folder="v1", created=record.get("created"))
        entry["thresholds"] = {k: (record.get("thresholds", {}).get(k) or {}).get("value") for k in ("image", "pixel")}
        self._write(data)
        for path in moved:
            path.unlink()
        log.info("%s now keeps versions: the calibrated profile is %s", self.root, self.root / "v1")
        return data

    def _clean(self) -> dict:
        """versions.json, after removing version folders it does not name (a writer died before naming them)."""
        data = self.read()
        listed = {e["version"] for e in data["versions"]}
        for number in self._folders():
            if number not in listed:
                log.warning("removed %s: a version folder no change finished writing", self.root / f"v{number}")
                shutil.rmtree(self.root / f"v{number}", ignore_errors=True)
        return data

    def _prune(self, data: dict) -> None:
        """Keep the newest PROFILE_KEEP_VERSIONS folders and the current one; older entries stay, marked pruned."""
        live = [e for e in data["versions"] if not e.get("pruned")]
        for entry in live[:max(0, len(live) - PROFILE_KEEP_VERSIONS)]:
            if entry["version"] == data["current"]:
                continue
            shutil.rmtree(self.root / entry["folder"], ignore_errors=True)
            entry["pruned"] = True


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _share_unchanged(folder: Path, previous: Path) -> None:
    """Files of a new version equal to the previous version's (the held-out reference, an unchanged memory)
    become hard links to them: a version costs only what changed."""
    for path in folder.iterdir():
        old = previous / path.name
        if not path.is_file() or not old.is_file() or old.is_symlink() or path.name == PROFILE_NAME:
            continue
        try:
            if old.stat().st_size == path.stat().st_size and old.read_bytes() == path.read_bytes():
                path.unlink()
                _link_or_copy(old, path)
        except OSError:
            continue  # a copy costs disk, never correctness
