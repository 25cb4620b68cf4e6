"""`recsys report RUNS_DIR`: collect every metrics.json below a folder into a leaderboard (CSV and
Markdown, best first per dataset by *validation* AUC) and an offline HTML report with plots.

Bad inputs are reported, never fatal and never silently mixed in: a metrics.json that is not JSON, one
that lacks required keys, a run folder with no metrics.json, and a failed run (error.json) each give a
warning that names the path, and the run is left out of the table.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import recsys.conf

REQUIRED_KEYS = ("model", "dataset", "val", "test", "best_epoch", "epochs", "train_seconds", "train_samples_per_second", "num_parameters")
# Runs written before metrics.json recorded its task's selection metric were CTR runs selected on AUC.
DEFAULT_MONITOR, DEFAULT_MODE = "val/auc", "max"


def selection_key(metrics: dict[str, Any]) -> str:
    """The metric (a key of `val` and `test`) a run was selected on."""
    return str(metrics.get("monitor") or DEFAULT_MONITOR).split("/", 1)[-1]
REFERENCE_CSV = Path(recsys.conf.__file__).parent / "reference" / "bars_ctr.csv"
RUN_MARKERS = (".hydra", "checkpoints", "error.json")


@dataclass
class Collection:
    runs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def collect(root: str | Path) -> Collection:
    root = Path(root)
    found = Collection()
    if not root.is_dir():
        found.warnings.append(f"{root} is not a folder")
        return found
    with_metrics = set()
    for path in sorted(root.rglob("metrics.json")):
        with_metrics.add(path.parent)
        try:
            metrics = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            found.warnings.append(f"corrupted metrics file {path}: {err}; run left out")
            continue
        if not isinstance(metrics, dict):
            found.warnings.append(f"corrupted metrics file {path}: not a JSON object; run left out")
            continue
        if metrics.get("task") == "search":
            # A search run chose an architecture; its retrain is the result (docs/search.md).
            found.warnings.append(f"search run {path.parent}: not a result (its retrain is); left out")
            continue
        missing = [k for k in REQUIRED_KEYS if k not in metrics]
        key = selection_key(metrics)
        for split in ("val", "test"):
            if isinstance(metrics.get(split), dict) and key not in metrics[split]:
                missing.append(f"{split}.{key}")
        if missing:
            found.warnings.append(f"partial metrics file {path}: missing {missing}; run left out")
            continue
        value = metrics["val"][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            found.warnings.append(f"metrics file {path}: its selection metric val.{key} is {value!r}, not a number; "
                                  "run left out (a diverged or broken run)")
            continue
        metrics["path"] = str(path.parent)
        found.runs.append(metrics)
    for marker in RUN_MARKERS:
        for hit in sorted(root.rglob(marker)):
            run_dir = hit.parent
            if run_dir in with_metrics or any(run_dir == p or p in run_dir.parents for p in with_metrics):
                continue
            with_metrics.add(run_dir)
            if marker == "error.json":
                try:
                    error = json.loads(hit.read_text()).get("error", "unknown error")
                except (json.JSONDecodeError, UnicodeDecodeError):
                    error = "unreadable error.json"
                found.warnings.append(f"failed run {run_dir}: {error}")
            else:
                found.warnings.append(f"no metrics.json in run folder {run_dir} (unfinished or interrupted); left out")
    return found


def load_reference(path: str | Path | None = REFERENCE_CSV) -> dict[tuple[str, str, str], tuple[float, str]]:
    if path is None or not Path(path).exists():
        return {}
    with open(path, newline="") as handle:
        return {(r["dataset"], r["model"], r["metric"]): (float(r["value"]), r["source"]) for r in csv.DictReader(handle)}


def _numbers(split: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in split.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def leaderboard(runs: list[dict[str, Any]], reference: dict | None = None) -> pl.DataFrame:
    """One row per run: its validation and test metrics (`val_<name>`, `test_<name>`), size, speed and
    flags; best first within each dataset by the metric the runs were selected on (`monitor`, `mode`)."""
    reference = reference or {}
    rows = []
    for r in runs:
        key = selection_key(r)
        ref = reference.get((r["dataset"], r["model"], f"test_{key}"))
        test = _numbers(r["test"])
        rows.append({
            "dataset": r["dataset"],
            "model": r["model"],
            "run_id": r.get("run_id", ""),
            "task": r.get("task", "ctr"),
            "selection_metric": key,
            "selection_mode": r.get("mode", DEFAULT_MODE),
            "selection_value": float(r["val"][key]),
            **{f"val_{k}": v for k, v in _numbers(r["val"]).items()},
            **{f"test_{k}": v for k, v in test.items()},
            "num_parameters": r["num_parameters"],
            "train_seconds": r["train_seconds"],
            "train_samples_per_second": r["train_samples_per_second"],
            "latency_ms": r.get("inference_latency_ms"),
            "selected_on": r.get("selected_on", "unknown"),
            "reference_test": ref[0] if ref else None,
            "delta_vs_reference": (test[key] - ref[0]) if ref and key in test else None,
            "synthetic": bool(r.get("synthetic_data", False)),
            "path": r["path"],
        })
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    # Higher is better when the mode is max: rank on the value with the sign that makes ascending best.
    order = pl.when(pl.col("selection_mode") == "min").then(pl.col("selection_value")).otherwise(-pl.col("selection_value"))
    frame = frame.with_columns(order.alias("_order")).sort(["dataset", "_order"], nulls_last=True)
    frame = frame.with_columns(pl.col("_order").rank("ordinal").over("dataset").alias("rank")).drop("_order")
    return frame.select("rank", pl.exclude("rank"))


def metric_columns(part: pl.DataFrame) -> list[str]:
    """The metric columns with a value for some run of `part`: the selection metric first (validation,
    then test), then the rest of validation and test."""
    keys = list(dict.fromkeys(part["selection_metric"].to_list()))
    present = [c for c in part.columns if c.startswith(("val_", "test_")) and part[c].is_not_null().any()]
    first = [c for k in keys for c in (f"val_{k}", f"test_{k}") if c in present]
    return first + [c for c in present if c not in first]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _digits(column: str) -> int:
    return 4 if column.startswith(("val_", "test_", "reference", "delta")) else 1


def markdown(frame: pl.DataFrame) -> str:
    if frame.is_empty():
        return "(no runs)\n"
    out = []
    for (dataset,), part in frame.group_by(["dataset"], maintain_order=True):
        cols = ["rank", "model", *metric_columns(part), "num_parameters", "train_seconds", "train_samples_per_second",
                "latency_ms", "reference_test", "delta_vs_reference", "flags", "run_id"]
        cols = [c for c in cols if c in ("rank", "model", "flags", "run_id") or part[c].is_not_null().any()]
        out.append(f"## {dataset}\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for row in part.iter_rows(named=True):
            row["flags"] = _flags(row)
            out.append("| " + " | ".join(_fmt(row.get(c), _digits(c)) for c in cols) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _flags(row: dict[str, Any]) -> str:
    flags = []
    if row.get("selected_on") not in ("valid", "val"):
        flags.append(f"SELECTED ON {str(row.get('selected_on')).upper()}")
    if row.get("synthetic"):
        flags.append("synthetic data")
    return "; ".join(flags)


# ---------------------------------------------------------------------------- plots
def _svg(fig) -> str:  # noqa: ANN001 - a matplotlib Figure
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def roc_points(logits: np.ndarray, labels: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-logits, kind="stable")
    y = labels[order]
    tps = np.concatenate([[0], np.cumsum(y)])
    fps = np.concatenate([[0], np.cumsum(1 - y)])
    tpr, fpr = tps / max(tps[-1], 1), fps / max(fps[-1], 1)
    keep = np.unique(np.linspace(0, len(tpr) - 1, min(max_points, len(tpr))).astype(int))
    return fpr[keep], tpr[keep]


def reliability(logits: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prob = 1 / (1 + np.exp(-logits))
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    mean_p = np.bincount(idx, weights=prob, minlength=bins) / np.maximum(count, 1)
    rate = np.bincount(idx, weights=labels, minlength=bins) / np.maximum(count, 1)
    mask = count > 0
    return mean_p[mask], rate[mask], count[mask]


def _plots(dataset: str, part: pl.DataFrame, runs_by_path: dict[str, dict], top: int) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = part.head(top)
    key = part["selection_metric"][0]
    name = key.upper() if key in ("auc", "gauc", "mrr") else key.replace("ndcg", "NDCG").replace("hr", "HR")
    test_col = f"test_{key}" if f"test_{key}" in part.columns else None
    figures = []
    fig_roc, ax_roc = plt.subplots(figsize=(5, 4.2))
    fig_cal, ax_cal = plt.subplots(figsize=(5, 4.2))
    drew = False
    for row in best.iter_rows(named=True):
        pred_path = Path(row["path"]) / "predictions.parquet"
        if not pred_path.exists():
            continue
        preds = pl.read_parquet(pred_path).filter(pl.col("split") == "test")
        if preds.is_empty():
            continue
        logits, labels = preds["logit"].to_numpy(), preds["label"].to_numpy()
        fpr, tpr = roc_points(logits, labels)
        label = f"{row['model']} {row['run_id'][:6]} ({row.get('test_auc') or float('nan'):.4f})"
        ax_roc.plot(fpr, tpr, label=label)
        mp, rate, _ = reliability(logits, labels)
        ax_cal.plot(mp, rate, marker="o", label=f"{row['model']} {row['run_id'][:6]}")
        drew = True
    if drew:
        ax_roc.plot([0, 1], [0, 1], ls=":", c="grey")
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC on test, best {top} by validation {name}")
        ax_roc.legend(fontsize=8)
        ax_cal.plot([0, 1], [0, 1], ls=":", c="grey")
        ax_cal.set(xlabel="mean predicted probability", ylabel="observed click rate", title="Calibration on test")
        ax_cal.legend(fontsize=8)
        figures += [("ROC curves", _svg(fig_roc)), ("Calibration (reliability)", _svg(fig_cal))]
    else:
        plt.close(fig_roc)
        plt.close(fig_cal)

    fig, ax = plt.subplots(figsize=(5, 4.2))
    for row in part.head(max(top, 10)).iter_rows(named=True):
        history = runs_by_path[row["path"]].get("history") or []
        if history:
            points = [(h["epoch"] + 1, h[key]) for h in history if isinstance(h.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker=".", label=f"{row['model']} {row['run_id'][:6]}")
    ax.set(xlabel="epoch", ylabel=f"validation {name}", title="Training curves")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    figures.append((f"Validation {name} per epoch", _svg(fig)))

    if test_col is None:
        return figures
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(part["num_parameters"].to_numpy(), part[test_col].to_numpy())
    for row in part.iter_rows(named=True):
        ax.annotate(row["model"], (row["num_parameters"], row[test_col]), fontsize=7)
    ax.set(xscale="log", xlabel="parameters", ylabel=f"test {name}", title=f"{name} against model size")
    figures.append((f"{name} against parameter count", _svg(fig)))

    with_latency = part.filter(pl.col("latency_ms").is_not_null())
    if with_latency.height:
        fig, ax = plt.subplots(figsize=(5, 4.2))
        ax.scatter(with_latency["latency_ms"].to_numpy(), with_latency[test_col].to_numpy())
        for row in with_latency.iter_rows(named=True):
            ax.annotate(row["model"], (row["latency_ms"], row[test_col]), fontsize=7)
        ax.set(xlabel="inference latency (ms)", ylabel=f"test {name}", title=f"{name} against latency")
        figures.append((f"{name} against latency", _svg(fig)))
    return figures


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: json.dumps(config, default=str)}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


IGNORED_SETTINGS = ("model._target_", "data.fields", "data.root", "trainer.default_root_dir", "trainer.enable_progress_bar")


def varying_settings(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Per run path, the settings whose values differ between runs of the same model (what a sweep varied)."""
    flats: dict[str, dict[str, Any]] = {}
    model_of: dict[str, str] = {}
    for r in runs:
        cfg = r.get("config") or {}
        picked = {k: cfg.get(k) for k in ("model", "task", "data", "seed", "trainer") if k in cfg}
        flats[r["path"]] = {k.rstrip("."): v for k, v in _flat(picked).items() if not k.startswith(IGNORED_SETTINGS)}
        model_of[r["path"]] = r["model"]
    out = {}
    for path, flat in flats.items():
        peers = [f for p, f in flats.items() if model_of[p] == model_of[path]]
        varying = [k for k in sorted(flat) if len({f.get(k) for f in peers}) > 1]
        out[path] = ", ".join(f"{k}={flat[k]}" for k in varying)
    return out


def _hparams(run: dict[str, Any]) -> str:
    cfg = run.get("config") or {}
    picked = {"model": cfg.get("model"), "task": cfg.get("task"), "batch_size": (cfg.get("data") or {}).get("batch_size"), "seed": cfg.get("seed")}
    return html.escape(json.dumps(picked, sort_keys=True, default=str, indent=1))


def write_html(path: Path, frame: pl.DataFrame, collection: Collection, top: int) -> None:
    runs_by_path = {r["path"]: r for r in collection.runs}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>recsys-zoo report</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:13px}",
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} th{background:#f3f3f3} td.l{text-align:left}",
             ".warn{background:#fff3cd;padding:.6em;border:1px solid #e0c36c} .flag{color:#b00;font-weight:bold}",
             ".plots{display:flex;flex-wrap:wrap;gap:1em} .plots figure{margin:0} code{font-size:11px;display:block;max-width:420px;white-space:pre-wrap}</style></head><body>",
             "<h1>recsys-zoo report</h1>",
             "<p>Ranked within each dataset by the <b>validation</b> metric each run was selected on (AUC for CTR, "
             "NDCG@20 for next-item); test metrics are reported, never used for selection. "
             "A run whose selection used the test split is flagged.</p>"]
    if collection.warnings:
        parts.append("<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in collection.warnings) + "</ul></div>")
    if frame.is_empty():
        parts.append("<p>No complete runs found.</p>")
    for (dataset,), part in ([] if frame.is_empty() else frame.group_by(["dataset"], maintain_order=True)):
        parts.append(f"<h2>{html.escape(str(dataset))}</h2><table><tr>")
        differs = varying_settings([runs_by_path[p] for p in part["path"].to_list()])
        cols = ["rank", "model", *metric_columns(part), "num_parameters", "train_seconds", "train_samples_per_second",
                "latency_ms", "reference_test", "delta_vs_reference"]
        cols = [c for c in cols if c in ("rank", "model") or part[c].is_not_null().any()]
        cols += ["flags", "settings that differ", "hyper-parameters"]
        parts.append("".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for row in part.iter_rows(named=True):
            flags = _flags(row)
            cells = [_fmt(row[c], _digits(c)) for c in cols[:-3]]
            parts.append("<tr>" + "".join(f"<td{' class=l' if i == 1 else ''}>{html.escape(c)}</td>" for i, c in enumerate(cells))
                         + f"<td class='l flag'>{html.escape(flags)}</td><td class=l>{html.escape(differs.get(row['path'], ''))}</td>"
                         + "<td class=l><details><summary>show</summary>"
                         f"<code>{_hparams(runs_by_path[row['path']])}</code></details></td></tr>")
        parts.append("</table><div class='plots'>")
        for title, svg in _plots(str(dataset), part, runs_by_path, top):
            parts.append(f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def report(runs_dir: str | Path, out: str | Path | None = None, reference: str | Path | None = REFERENCE_CSV, top: int = 5) -> tuple[pl.DataFrame, Collection]:
    collection = collect(runs_dir)
    frame = leaderboard(collection.runs, load_reference(reference))
    out = Path(out) if out else Path(runs_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not frame.is_empty():
        frame.with_columns(pl.struct(pl.all()).map_elements(_flags, return_dtype=pl.String).alias("flags")).write_csv(out / "leaderboard.csv")
    (out / "leaderboard.md").write_text(markdown(frame))
    write_html(out / "report.html", frame, collection, top)
    return frame, collection


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="recsys report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir")
    parser.add_argument("--out", default=None, help="default: RUNS_DIR/report")
    parser.add_argument("--reference", default=str(REFERENCE_CSV), help="CSV of published numbers (dataset,model,metric,value,source); 'none' to skip")
    parser.add_argument("--top", type=int, default=5, help="runs per dataset in the ROC and calibration plots")
    args = parser.parse_args(argv)
    frame, collection = report(args.runs_dir, args.out, None if args.reference == "none" else args.reference, args.top)
    for warning in collection.warnings:
        print(f"warning: {warning}")
    print(markdown(frame))
    print(f"written to {Path(args.out) if args.out else Path(args.runs_dir) / 'report'}")
