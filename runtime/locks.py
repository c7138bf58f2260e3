"""One writer at a time: an exclusive lock per bundle, profile or output folder, naming who holds it.

Two `winclip-quantize` runs on one bundle would both report success and one
engine would be lost; two runs writing one `--out` race on their event log. A
writer takes the lock (a kernel `flock`, released by the kernel when the process
dies, even by kill -9) and the second one is refused in one line that names the
first. The holder removes the lock file while it still holds the lock, and a
taker checks that the file it locked is still the one at the path, so no two
runs ever hold "the" lock at once and no lock file is left behind.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from winclip.runtime.errors import WinclipError


class Locked(WinclipError):
    """Another run is writing the same thing right now."""


@contextmanager
def writer_lock(lock_file: Path, what: str):
    """Hold the exclusive lock `lock_file` while writing `what` (words for the refusal)."""
    lock_file = Path(lock_file)
    fd = _acquire(lock_file, what)
    try:
        command = os.path.basename(sys.argv[0] or "python")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command}, pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        try:
            lock_file.unlink()  # while still held: a taker that opened it now finds it gone, and retries
        except OSError:
            pass
        os.close(fd)  # closing releases the flock


def _acquire(lock_file: Path, what: str) -> int:
    for _ in range(100):
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Locked(f"cannot lock {what} for writing ({lock_file}: {exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise Locked(f"{what} is being written by another run ({holder}); wait for it to finish") from None
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its holder removed it between our open and our lock
            same = False
        if same:
            return fd
        os.close(fd)
    raise Locked(f"cannot lock {what} for writing ({lock_file} keeps changing)")
