"""Files and folders that appear whole or not at all."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from winclip.runtime.locks import writer_lock

log = logging.getLogger(__name__)


def write_atomic(target: Path, data: bytes, sync: bool = False) -> None:
    """Write bytes to `target` through a unique temporary file beside it, then rename (mode 0644).

    The temporary name (.tmp-XXXX.part) is unique, so it can never be another file's real name.
    """
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are for whoever reads the folder
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an old one at `dst` is removed only afterwards."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(target: Path, force: bool = False, ours: Callable[[Path], bool] | None = None):
    """Fill a temporary folder beside `target`; it becomes `target` only when the block ends without error.

    On any failure (or Ctrl-C) the temporary folder is removed, so a folder that
    exists under the target name is always complete. An existing target is
    replaced only with `force`, and only when `ours(target)` says it is one of
    our outputs (never some other folder given by mistake).
    """
    target = Path(target)
    if target.exists():
        if not force:
            raise FileExistsError(f"{target} exists; pass --force to replace it")
        if not target.is_dir() or (ours is not None and not ours(target)):
            raise FileExistsError(f"{target} exists and is not one of this command's outputs; it is left alone")
    missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # innermost first
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    try:
        with writer_lock(lock, str(target)):
            remove_leftovers(target.parent, [f".{target.name}.partial-*", f".{target.name}.old-*"], str(target))
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
            try:
                yield tmp
                os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
                replace_dir(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        if missing:  # folders made for this write alone (eval/ of eval/real): a failed write leaves none behind
            lock.unlink(missing_ok=True)
            for folder in missing:
                try:
                    folder.rmdir()
                except OSError:  # no longer empty: someone else's now
                    break
        raise


def remove_leftovers(folder: Path, patterns: list[str], what: str) -> list[str]:
    """Remove what an interrupted write (kill -9, power loss) left in `folder`, and say so; call under the lock."""
    removed = []
    for pattern in patterns:
        for path in sorted(Path(folder).glob(pattern)):
            try:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                removed.append(path.name)
            except OSError:
                pass
    if removed:
        log.warning("removed %d leftover(s) of an interrupted write of %s: %s", len(removed), what,
                    ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed
