"""The event-file sinks: rotating `events.jsonl` files and stdout (`--events PATH|-`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from winclip.runtime.command import Finite, Whole
from winclip.runtime.line import defaults
from winclip.runtime.line.events import to_json_line, write_whole
from winclip.runtime.line.sinks.base import SinkKind
from winclip.runtime.line.status import LiveStatus


class RotatingEventLog:
    """events.jsonl for live runs of weeks: appended to, flushed per line, rotated by size.

    When the next line would take the file past `max_bytes`, it becomes
    `events.jsonl.1` (older ones shift to .2, .3, ...; only `keep` are kept) and a
    new file starts. A restarted service appends to the file it left; a line cut
    off by a crash is closed with a newline first, so the lines after it parse.
    """

    def __init__(self, path: Path, max_bytes: int = int(defaults.ROTATE_MB * (1 << 20)),
                 keep: int = defaults.ROTATE_KEEP):
        if max_bytes < 1 or keep < 1:
            raise ValueError("max_bytes and keep must be >= 1")
        self.fd: int | None = None
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.rotations = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size
        if self.size and not self._ends_with_newline():
            write_whole(self.fd, b"\n")
            self.size += 1

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def _rotate(self) -> None:
        os.close(self.fd)
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._open()

    def write(self, event: dict) -> None:
        data = to_json_line(event).encode("utf-8")
        if self.size and self.size + len(data) > self.max_bytes:
            self._rotate()
        write_whole(self.fd, data)  # one system call a line: a process killed between two leaves whole lines
        self.size += len(data)

    def close(self, timeout: float = 0.0) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StreamEvents:
    """Event lines to a stream (stdout for `--events -`), a whole line per system call for whoever reads the pipe."""

    def __init__(self, stream):
        self.stream = stream
        try:
            self.stream.flush()
            self.fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream: written and flushed instead
            self.fd = None

    def write(self, event: dict) -> None:
        line = to_json_line(event)
        if self.fd is None:
            self.stream.write(line)
            self.stream.flush()
        else:
            write_whole(self.fd, line.encode("utf-8"))

    def close(self, timeout: float = 0.0) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a stream already closed
            pass


class EventFiles(SinkKind):
    name = "events"
    primary = "events"  # the option that asks for this sink
    options = (
        click.option("--events", "events", multiple=True, metavar="PATH|-",
                     help="Live: where event lines go: a file (appended, rotated by size) or '-' for stdout; "
                          "repeat for both. [default: OUT/events.jsonl]"),
        click.option("--rotate-mb", type=Finite(0.001, 1e6), default=defaults.ROTATE_MB,
                     help="Live: an event file that would pass this size becomes FILE.1 (older ones FILE.2, ...)."),
        click.option("--rotate-keep", type=Whole(1, 1000), default=defaults.ROTATE_KEEP,
                     help="Live: rotated event files kept."),
    )

    def plan(self, values: dict, out):
        events = list(values["events"])
        if len(set(events)) != len(events):
            raise click.UsageError("--events names the same place twice")
        targets = events or ([str(out / "events.jsonl")] if out is not None else [])
        if not targets:
            return None
        return targets, int(values["rotate_mb"] * (1 << 20)), values["rotate_keep"]

    def open(self, plan, status: LiveStatus):
        targets, max_bytes, keep = plan
        opened = []
        for target in targets:
            if target == "-":
                opened.append((StreamEvents(sys.stdout), "stdout"))
                continue
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                opened.append((RotatingEventLog(path, max_bytes=max_bytes, keep=keep), f"events file {path}"))
            except OSError as exc:
                for sink, _ in opened:
                    sink.close()
                raise OSError(exc.errno, f"cannot write events to {path}: {exc.strerror or exc}") from None
        return opened


KIND = EventFiles()
