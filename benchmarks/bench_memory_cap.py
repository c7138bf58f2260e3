"""A capped WinCLIP+ memory against keeping every row: how much the k-center cap changes the scores.

    python -m winclip.benchmarks.bench_memory_cap BUNDLE [--object bottle] [--cap 16] [--taught 28] [--eval 40]

A line profile of 4 real good parts (the simulated textiles) is taught `--taught`
more, one at a time, as the live page does: each time the new part's rows join
the memory and, past `--cap` images' worth of rows per part, greedy k-center keeps
a cover (runtime/coreset.py). The same parts are also kept whole (no cap). Both
memories then score `--eval` unseen good parts and as many with local defects:
the table gives the rows kept, the covering radius, the largest and mean score
change, the image AUROC of each memory, and the time of the selection and of
scoring (timings are only indicative on a shared machine; run on a quiet one).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np
from winclip.benchmarks.results import write_results
from winclip.runtime.command import CONTEXT


def _score(detector, outputs: dict, memory) -> np.ndarray:
    return np.asarray(detector.scorer(outputs, memory).image_score, dtype=np.float64)


def measure(bundle: Path, object_name: str | None, cap: int, taught: int, evaluate: int, threads: int | None) -> dict:
    from winclip.calibration.evaluation.datasets import textile_images
    from winclip.calibration.evaluation.metrics import auroc
    from winclip.runtime import Detector
    from winclip.runtime.images import read_image
    from winclip.runtime.memory import FewShotMemory
    from winclip.runtime.profiles.teach import rows_per_image

    detector = Detector.from_bundle(bundle, object=object_name, provider="cpu", threads=threads)

    def embed(paths):
        chunks = [detector.embed([read_image(p) for p in paths[i:i + 4]])[0] for i in range(0, len(paths), 4)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    base = FewShotMemory.from_outputs(embed(textile_images("nominal", 4)), detector.memory_key)
    per_image = rows_per_image(base)
    full, capped, select_s = base, base, 0.0
    for path in textile_images("nominal", taught, start=100):
        rows = FewShotMemory.from_outputs(embed([path]), detector.memory_key)
        full = full.joined(rows)
        t0 = time.perf_counter()
        capped = capped.joined(rows).capped(cap, per_image)
        select_s = max(select_s, time.perf_counter() - t0)
    normals = embed(textile_images("nominal", evaluate, start=500))
    defects = embed(textile_images("local", evaluate))
    _score(detector, normals, capped)  # warm-up: the first product pays for allocations
    results = {}
    for name, memory in (("all rows", full), (f"cap {cap}", capped)):
        t0 = time.perf_counter()
        good, bad = _score(detector, normals, memory), _score(detector, defects, memory)
        seconds = (time.perf_counter() - t0) / (2 * evaluate)
        labels = np.r_[np.zeros(evaluate), np.ones(evaluate)]
        results[name] = {"rows": {p: int(a.shape[0]) for p, a in memory.arrays().items()}, "good": good, "bad": bad,
                         "auroc": auroc(labels, np.r_[good, bad]), "score_ms_per_frame": 1000 * seconds}
    change = np.abs(np.r_[results[f"cap {cap}"]["good"], results[f"cap {cap}"]["bad"]]
                    - np.r_[results["all rows"]["good"], results["all rows"]["bad"]])
    from winclip.runtime.thresholds import threshold_for_false_alarm_rate

    threshold = threshold_for_false_alarm_rate(results["all rows"]["good"], 0.05)
    flips = sum(int(((results["all rows"][k] >= threshold) != (results[f"cap {cap}"][k] >= threshold)).sum())
                for k in ("good", "bad"))
    return {"bundle": str(bundle), "images": 4 + taught, "cap_images": cap, "eval_each": evaluate,
            "verdicts_changed": flips, "threshold_5pct": threshold,
            "radius": {p: s["radius"] for p, s in (capped.selection or {}).items()},
            "largest_selection_s": round(select_s, 3), "max_score_change": float(change.max()),
            "mean_score_change": float(change.mean()),
            "memories": {name: {k: v for k, v in r.items() if k not in ("good", "bad")} for name, r in results.items()}}


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--object", "object_name", default=None, help="Object whose text embeddings to use.")
@click.option("--cap", type=click.IntRange(min=1), default=16, help="Images' worth of rows the capped memory keeps.")
@click.option("--taught", type=click.IntRange(min=1), default=28, help="Good parts taught after the first 4.")
@click.option("--eval", "evaluate", type=click.IntRange(min=2), default=40, help="Good and defective parts scored.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the results here.")
def main(bundle, object_name, cap, taught, evaluate, threads, json_out):
    """Measure the k-center memory cap against keeping every row on real images."""
    result = measure(bundle, object_name, cap, taught, evaluate, threads)
    click.echo(f"{result['images']} images taught one at a time, cap {cap} images' worth of rows; "
               f"{evaluate} good + {evaluate} local-defect textiles scored")
    click.echo(f"{'memory':<10} {'patch rows':>10} {'window rows':>12} {'AUROC':>7} {'score ms/frame':>15}")
    for name, m in result["memories"].items():
        windows = sum(v for k, v in m["rows"].items() if k.startswith("windows"))
        click.echo(f"{name:<10} {m['rows']['patches']:>10} {windows:>12} {m['auroc']:>7.4f} "
                   f"{m['score_ms_per_frame']:>15.2f}")
    click.echo(f"score change: max {result['max_score_change']:.2e}, mean {result['mean_score_change']:.2e}; covering "
               f"radius (1 - cos) {', '.join(f'{k} {v:.4f}' for k, v in result['radius'].items())}; slowest "
               f"selection {result['largest_selection_s']:.2f} s")
    click.echo(f"verdicts changed at the all-rows threshold for 5 % false alarms ({result['threshold_5pct']:.4f}): "
               f"{result['verdicts_changed']} of {2 * evaluate}")
    write_results(result, None, json_out)


if __name__ == "__main__":
    sys.exit(main())
