"""Wall time and peak memory of `winclip-export` for the real ViT-B-16+ architecture.

Runs the CLI in a child process (random weights from a checkpoint file this script
writes) and reads the child's peak resident memory from the OS.

    python benchmarks/bench_export.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from winclip.export.backbones import load_backbone

    work = Path(tempfile.mkdtemp(prefix="winclip-bench-export-"))
    checkpoint = work / "vit.pt"  # random weights: the time and memory do not depend on their values
    torch.save(load_backbone("ViT-B-16+", "none").model.state_dict(), checkpoint)
    cmd = [sys.executable, "-m", "winclip.export.cli", "--backbone", "ViT-B-16+", "--pretrained", str(checkpoint),
           "--object", "bottle", "--out", str(work / "bundle")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    size_mb = sum(p.stat().st_size for p in (work / "bundle").rglob("*") if p.is_file()) / 1024**2
    print(f"winclip-export ViT-B-16+: {wall:.1f} s wall, peak RSS {peak_gb:.2f} GB, bundle {size_mb:.0f} MB")


if __name__ == "__main__":
    main()
