"""What winclip-eval writes: the table (markdown, CSV, JSON) and a self-contained HTML report.

Table rows are per setting (0-shot, K-shot, profile) and category, then the mean
over categories; with several seeds a value is the mean over seeds, with its
standard deviation (population, ddof=0). Values are fractions in CSV and JSON and
% in markdown and HTML, as in the paper.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from datetime import datetime, timezone

import numpy as np

from winclip.calibration.evaluation.evaluate import PROFILE_SETTING, CategoryResult, Evaluation
from winclip.calibration.evaluation.metrics import METRICS, PRO_MAX_FPR
from winclip.calibration.evaluation.paper import PAPER_LABEL, paper_means, weights_warning
from winclip.runtime.images import jpeg_bytes

RESULTS_FORMAT = "winclip-eval-results"
RESULTS_VERSION = 1
MEAN = "mean"


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values)) if len(values) > 1 else None)


def settings_of(ev: Evaluation) -> list[tuple[str, int]]:
    """(setting, K) in the order they ran."""
    seen: dict[str, int] = {}
    for c in ev.categories:
        for run in c.runs:
            seen.setdefault(run.setting, run.shots)
    order = {PROFILE_SETTING: -1}
    return sorted(seen.items(), key=lambda item: order.get(item[0], item[1]))


def _category_row(c: CategoryResult, setting: str) -> dict | None:
    runs = [r for r in c.runs if r.setting == setting]
    if not runs:
        return None
    row = {"setting": setting, "shots": runs[0].shots, "category": c.name, "object": c.object_name,
           "good": int((c.labels == 0).sum()), "defect": int(c.labels.sum()), "seeds": len(runs)}
    for m in METRICS:
        row[m], row[f"{m}_std"] = _mean_std([r.metrics[m] for r in runs if r.metrics[m] is not None])
    return row


def table_rows(ev: Evaluation) -> list[dict]:
    """Per setting: one row per category, then the mean over categories (and the paper's, where it applies)."""
    rows = []
    for setting, shots in settings_of(ev):
        cats = [r for r in (_category_row(c, setting) for c in ev.categories) if r is not None]
        rows += cats
        mean = {"setting": setting, "shots": shots, "category": MEAN, "object": "",
                "good": sum(r["good"] for r in cats), "defect": sum(r["defect"] for r in cats),
                "seeds": max(r["seeds"] for r in cats)}
        for m in METRICS:
            # the mean of the category means; its spread: the std over seeds of the per-seed category means
            mean[m] = _mean_std([r[m] for r in cats if r[m] is not None])[0]
            mean[f"{m}_std"] = _mean_std(_per_seed_means(ev, setting, m))[1]
        rows.append(mean)
        paper = paper_means(ev.layout, shots, ev.bundle) if setting != PROFILE_SETTING else None
        if paper is not None:
            rows.append({"setting": setting, "shots": shots, "category": PAPER_LABEL, "object": "", "good": None,
                         "defect": None, "seeds": None,
                         **{m: paper.get(m) and paper[m] / 100.0 for m in METRICS},
                         **{f"{m}_std": None for m in METRICS}})
    return rows


def _per_seed_means(ev: Evaluation, setting: str, metric: str) -> list[float]:
    """For seeds that every category with this metric ran: the mean over categories; [] when fewer than 2."""
    by_cat = [{r.seed: r.metrics[metric] for r in c.runs if r.setting == setting and r.metrics[metric] is not None}
              for c in ev.categories]
    by_cat = [d for d in by_cat if d]
    if not by_cat:
        return []
    common = set.intersection(*(set(d) for d in by_cat))
    if len(common) < 2:
        return []
    return [float(np.mean([d[s] for d in by_cat])) for s in sorted(common)]


def _pct(value, std=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _facts(ev: Evaluation) -> list[str]:
    h, w = ev.pixel_size
    weights = ev.bundle.get("weights", {})
    weights_name = weights.get("tag") or weights.get("file") or weights.get("kind")
    per_image = _seconds_per_image(ev)
    lines = [
        f"data set {ev.dataset} ({ev.layout} layout); bundle {ev.bundle.get('name')} "
        f"({ev.bundle.get('open_clip_model')}, weights {weights_name})",
        f"engine {ev.engine.get('precision')} ({ev.engine.get('file')}) on {ev.engine.get('provider')}; "
        f"seconds per image: engine {per_image['engine']:.4f} (preprocess + ONNX Runtime, once per image), "
        f"scoring {per_image['scoring']:.4f} per setting",
        f"pixel metrics at {w}x{h} (maps bilinear from the patch grid, kept as float16; masks resized with nearest "
        f"neighbour); PRO integrates to a false-positive rate of {PRO_MAX_FPR:g}; std over seeds is ddof=0",
    ]
    warning = weights_warning(ev.bundle)
    if warning:
        lines.insert(0, f"WARNING: {warning}")
    return lines


def _seconds_per_image(ev: Evaluation) -> dict[str, float]:
    images = sum(len(c.files) for c in ev.categories)
    runs = sum(len(c.runs) * len(c.files) for c in ev.categories)
    return {"engine": sum(c.engine_seconds for c in ev.categories) / max(images, 1),
            "scoring": sum(r.scoring_seconds for c in ev.categories for r in c.runs) / max(runs, 1)}


def markdown(ev: Evaluation) -> str:
    out = []
    rows = table_rows(ev)
    for setting, _ in settings_of(ev):
        out += [f"### {setting}", "",
                "| category | object | good | defect | " + " | ".join(METRICS[m].header for m in METRICS) + " |",
                "|---|---|---:|---:|" + "---:|" * len(METRICS)]
        for r in (r for r in rows if r["setting"] == setting):
            name = f"**{r['category']}**" if r["category"] == MEAN else r["category"]
            counts = f"{r['good']} | {r['defect']}" if r["good"] is not None else " | "
            out.append(f"| {name} | {r['object']} | {counts} | "
                       + " | ".join(_pct(r[m], r[f"{m}_std"]) for m in METRICS) + " |")
        out.append("")
    for c in ev.categories:
        for run in c.runs:
            if run.thresholds:
                out.append(f"profile thresholds on {c.name}: " + _threshold_text(run.thresholds))
    out += [f"- {line}" for line in _facts(ev)]
    out += [f"- INCOMPLETE: {reason}" for reason in ev.incomplete]
    skipped = [(c.name, line) for c in ev.categories for line in c.skipped]
    if skipped:
        out += ["", "Skipped images (each with its reason):", ""]
        out += [f"- {name}: {line}" for name, line in skipped]
    return "\n".join(out) + "\n"


def _threshold_text(report: dict) -> str:
    parts = []
    for key, what in (("image", "image threshold"), ("parts_with_a_region", "pixel threshold, parts with a region"),
                      ("pixels", "pixel threshold, pixels")):
        if key in report:
            r = report[key]
            parts.append(f"{what} {r['threshold']:.4f}: precision {_pct(r['precision'])}%, recall "
                         f"{_pct(r['recall'])}%, false alarms {_pct(r['false_alarm_rate'])}%")
    return "; ".join(parts) or "the profile has no thresholds"


def csv_text(ev: Evaluation) -> str:
    buf = io.StringIO()
    fields = ["setting", "shots", "category", "object", "good", "defect", "seeds",
              *[name for m in METRICS for name in (m, f"{m}_std")]]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in table_rows(ev):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def results_json(ev: Evaluation) -> dict:
    o = ev.options
    return {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": not ev.incomplete, "incomplete": ev.incomplete,
        "dataset": str(ev.dataset), "layout": ev.layout, "bundle": ev.bundle, "engine": ev.engine,
        "weights_warning": weights_warning(ev.bundle),
        "pixel_size": list(ev.pixel_size),
        "pixel_maps": "bilinear from the patch grid to the pixel size, float16; masks resized with nearest neighbour",
        "pro_max_fpr": PRO_MAX_FPR,
        "options": {"shots": list(o.shots), "seeds": o.seeds, "seed": o.seed, "objects": o.objects,
                    "profile": None if o.profile is None else str(o.profile), "batch_size": o.batch_size},
        "seconds_per_image": _seconds_per_image(ev),
        "rows": table_rows(ev),
        "categories": [{
            "name": c.name, "object": c.object_name, "good": int((c.labels == 0).sum()), "defect": int(c.labels.sum()),
            "pixel_metrics": c.pixel_metrics, "skipped_images": c.skipped, "notes": c.notes,
            "engine_seconds": c.engine_seconds,
            "runs": [{"setting": r.setting, "shots": r.shots, "seed": r.seed, "references": r.references,
                      "metrics": r.metrics, "scoring_seconds": r.scoring_seconds, "thresholds": r.thresholds}
                     for r in c.runs],
        } for c in ev.categories],
        "skipped_categories": [{"name": n, "reason": r} for n, r in ev.skipped_categories],
    }


def json_text(ev: Evaluation) -> str:
    return json.dumps(results_json(ev), indent=2, allow_nan=False) + "\n"


# ---- HTML

def _png_data_uri(figure) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jpeg_data_uri(image: np.ndarray) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image, quality=85)).decode("ascii")


def _curves_figure(c: CategoryResult):
    """ROC (image level) and PRO (pixel level, to the integration limit) of the first run of each setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if c.pixel_metrics else 1, figsize=(9 if c.pixel_metrics else 4.5, 4), squeeze=False)
    firsts = {}
    for run in c.runs:
        firsts.setdefault(run.setting, run)
    roc, pro = axes[0][0], axes[0][1] if c.pixel_metrics else None
    for setting, run in firsts.items():
        fpr, tpr = run.curves["roc"]
        roc.plot(fpr, tpr, label=f"{run.name} ({_pct(run.metrics['image_auroc'])})")
        if pro is not None and "pro" in run.curves:
            x, y = run.curves["pro"]
            inside = x <= PRO_MAX_FPR * 1.2
            pro.plot(x[inside], y[inside], label=f"{run.name} ({_pct(run.metrics['pixel_pro'])})")
    roc.plot([0, 1], [0, 1], color="0.7", linestyle=":")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{c.name}: image ROC")
    roc.legend(fontsize=8, loc="lower right")
    if pro is not None:
        pro.axvline(PRO_MAX_FPR, color="0.6", linestyle="--")
        pro.set(xlabel="pixel false-positive rate", ylabel="per-region overlap", title=f"{c.name}: PRO",
                xlim=(0, PRO_MAX_FPR * 1.2), ylim=(0, 1.02))
        pro.legend(fontsize=8, loc="lower right")
    uri = _png_data_uri(fig)
    plt.close(fig)
    return uri


def _html_table(ev: Evaluation, setting: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in ["category", "object", "good", "defect", *(m.header for m in METRICS.values())])
    body = []
    for r in (r for r in table_rows(ev) if r["setting"] == setting):
        cls = ' class="mean"' if r["category"] == MEAN else ' class="paper"' if r["good"] is None else ""
        cells = [r["category"], r["object"], "" if r["good"] is None else r["good"],
                 "" if r["defect"] is None else r["defect"], *(_pct(r[m], r[f"{m}_std"]) for m in METRICS)]
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,td:nth-child(2){text-align:left}
tr.mean{font-weight:bold}tr.paper{color:#555;font-style:italic}.warn{background:#fee;border:1px solid #c33;padding:.5em}
figure{display:inline-block;margin:4px;width:200px;font-size:11px;vertical-align:top}figure img{width:200px}"""


def html_report(ev: Evaluation) -> str:
    """One self-contained page: facts, tables, curves and overlays (every picture inline)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>winclip-eval: {html.escape(str(ev.dataset))}"
             f"</title><style>{STYLE}</style></head><body><h1>winclip-eval</h1>"]
    warning = weights_warning(ev.bundle)
    if warning or ev.incomplete:
        items = ([warning] if warning else []) + [f"INCOMPLETE: {r}" for r in ev.incomplete]
        parts.append("<div class='warn'>" + "<br>".join(html.escape(i) for i in items) + "</div>")
    parts.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in _facts(ev) if not f.startswith("WARNING"))
                 + "</ul>")
    for setting, _ in settings_of(ev):
        parts.append(f"<h2>{html.escape(setting)}</h2>{_html_table(ev, setting)}")
    for c in ev.categories:
        parts.append(f"<h2>{html.escape(c.name)} ({html.escape(c.object_name)})</h2>")
        for run in c.runs:
            if run.thresholds:
                parts.append(f"<p>{html.escape(_threshold_text(run.thresholds))}</p>")
        parts.append(f"<img alt='curves' src='{_curves_figure(c)}'>")
        if c.examples:
            last = c.runs[-1]
            parts.append(f"<p>Best and worst scored images of {html.escape(last.name)} (heat map from blue "
                         "to red over this run's own pixel-score range, given under each; white outline: ground "
                         "truth)</p>")
            parts += [f"<figure><img src='{_jpeg_data_uri(e.image)}'><figcaption>{html.escape(e.caption)}"
                      "</figcaption></figure>" for e in c.examples]
        if c.skipped or c.notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in [*c.notes, *c.skipped]) + "</ul>")
    if ev.skipped_categories:
        parts.append("<h2>Categories not evaluated</h2><ul>" + "".join(
            f"<li>{html.escape(n)}: {html.escape(r)}</li>" for n, r in ev.skipped_categories) + "</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)
