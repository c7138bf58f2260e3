"""This process's resident memory, read from /proc/self/status (Linux), and its peak per stage.

VmRSS is what is resident now, VmHWM the highest it has been. Writing 5 to
/proc/self/clear_refs resets VmHWM to the current RSS (Linux 4.0 and later, for
one's own process), so a run can give each of its stages a peak of its own;
where the kernel refuses, a stage's peak is the peak since the process started.
"""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, MiB (empty where /proc is not there)."""
    out = {}
    try:
        text = STATUS.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    now = status()
    if "VmRSS" not in now:
        raise RuntimeError("no VmRSS in /proc/self/status")
    return now["VmRSS"]


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StagePeaks:
    """The peak resident memory of each stage of a run, MiB: VmHWM read, then reset, at each mark."""

    def __init__(self):
        self.resettable = reset_peak()
        self.peaks: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """Close `stage`: record the peak since the previous mark."""
        self.peaks[stage] = round(status().get("VmHWM", 0.0), 1)
        if self.resettable:
            reset_peak()
