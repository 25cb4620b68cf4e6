"""`recsys report RUNS_DIR`: collect every metrics.json below a folder into a leaderboard (CSV and
Markdown, best first per dataset by the *validation* metric each run was selected on) and an offline HTML
report with plots. Each dataset's baselines (recsys.baselines: the constant and the user/item target-rate
predictors for CTR, most popular for next-item; read from the runs' baselines.json) are rows of its table,
and a run that does not beat the best of them on validation is flagged.

Bad inputs are reported, never fatal and never silently mixed in: a metrics.json that is not JSON, one
that lacks required keys, a run folder with no metrics.json, and a failed run (error.json) each give a
warning that names the path, and the run is left out of the table.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import recsys.conf
from recsys.baselines import beats, best_baseline, read_baselines
from recsys.plotting import figure_svg

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
    # (dataset, data fingerprint) -> the baselines.json of a run on that data (all such files are the same)
    baselines: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


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
        baselines = read_baselines(path.parent)
        if baselines is not None:
            fingerprint = str(baselines.get("data_fingerprint") or metrics.get("data_fingerprint") or "")
            found.baselines.setdefault((str(metrics["dataset"]), fingerprint), baselines)
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


def _baseline_rows(runs: list[dict[str, Any]], baselines: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Leaderboard rows for the baselines of every (dataset, data fingerprint) that some run trained on,
    selected on the metric those runs were selected on."""
    rows = []
    for (dataset, fingerprint), payload in baselines.items():
        peers = [r for r in runs if r["dataset"] == dataset and str(r.get("data_fingerprint") or "") in ("", fingerprint)]
        if not peers:
            continue
        key, mode = selection_key(peers[0]), peers[0].get("mode", DEFAULT_MODE)
        for b in payload["baselines"]:
            value = (b.get("val") or {}).get(key)
            if not isinstance(value, (int, float)) or math.isnan(float(value)):
                continue
            rows.append({
                "dataset": dataset, "model": str(b.get("model") or b.get("name")), "run_id": f"data {fingerprint[:8]}",
                "task": payload.get("task", peers[0].get("task", "ctr")), "selection_metric": key, "selection_mode": mode,
                "selection_value": float(value),
                **{f"val_{k}": v for k, v in _numbers(b.get("val") or {}).items()},
                **{f"test_{k}": v for k, v in _numbers(b.get("test") or {}).items()},
                "selected_on": "valid", "synthetic": bool(payload.get("synthetic_data", False)), "baseline": True,
                "description": str(b.get("description") or ""), "path": None, "data_fingerprint": fingerprint,
            })
    return rows


def _below_baseline(run: dict[str, Any], baselines: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """A flag when the run's validation value does not beat the best baseline of its data (its own data
    fingerprint; else any baselines of its dataset), or None."""
    key, mode = selection_key(run), run.get("mode", DEFAULT_MODE)
    fingerprint = str(run.get("data_fingerprint") or "")
    candidates = [p for (d, f), p in baselines.items() if d == run["dataset"] and f == fingerprint] or \
                 [p for (d, _), p in baselines.items() if d == run["dataset"]]
    best = best_baseline([b for p in candidates for b in p["baselines"]], key, mode)
    if best is None or beats(float(run["val"][key]), float(best["val"][key]), mode):
        return None
    return f"BELOW BASELINE ({best.get('model')}: val {metric_name(key)} {float(best['val'][key]):.4f})"


def leaderboard(runs: list[dict[str, Any]], reference: dict | None = None,
                baselines: dict[tuple[str, str], dict[str, Any]] | None = None) -> pl.DataFrame:
    """One row per run: its validation and test metrics (`val_<name>`, `test_<name>`), size, speed and
    flags; best first within each dataset by the metric the runs were selected on (`monitor`, `mode`).
    Each dataset's `baselines` (from `collect`) are rows too, marked `baseline`, placed by their
    validation value but not ranked."""
    reference = reference or {}
    baselines = baselines or {}
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
            "baseline": False,
            "below_baseline": _below_baseline(r, baselines),
            "path": r["path"],
        })
    rows += _baseline_rows(runs, baselines)
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    # Higher is better when the mode is max: rank on the value with the sign that makes ascending best.
    order = pl.when(pl.col("selection_mode") == "min").then(pl.col("selection_value")).otherwise(-pl.col("selection_value"))
    frame = frame.with_columns(order.alias("_order")).sort(["dataset", "_order", "baseline"], nulls_last=True)
    ranked = pl.when(~pl.col("baseline")).then(pl.col("_order")).otherwise(None)
    frame = frame.with_columns(ranked.rank("ordinal").over("dataset").cast(pl.Int64).alias("rank")).drop("_order")
    return frame.select("rank", pl.exclude("rank"))


def metric_columns(part: pl.DataFrame) -> list[str]:
    """The metric columns with a value for some run of `part`: the selection metric first (validation,
    then test), then the rest of validation and test."""
    keys = list(dict.fromkeys(part["selection_metric"].to_list()))
    present = [c for c in part.columns if c.startswith(("val_", "test_")) and part[c].is_not_null().any()]
    first = [c for k in keys for c in (f"val_{k}", f"test_{k}") if c in present]
    return first + [c for c in present if c not in first]


# What the tables call their columns (the CSV keeps the column names, for programs).
COLUMN_NAMES = {"num_parameters": "params", "train_seconds": "train s", "train_samples_per_second": "train rows/s",
                "latency_ms": "latency ms", "reference_test": "published test", "delta_vs_reference": "Δ vs published",
                "run_id": "run"}
METRIC_NAMES = {"auc": "AUC", "gauc": "gAUC", "logloss": "logloss", "mrr": "MRR", "loss": "loss"}


def metric_name(key: str) -> str:
    """auc -> AUC, ndcg@10 -> NDCG@10, hr@20 -> HR@20."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    name, _, cutoff = key.partition("@")
    return f"{name.upper()}@{cutoff}" if cutoff else key


def header(column: str) -> str:
    """A table's name for a leaderboard column: val_auc -> "val AUC", test_ndcg@10 -> "test NDCG@10"."""
    for split in ("val", "test"):
        if column.startswith(f"{split}_"):
            return f"{split} {metric_name(column[len(split) + 1:])}"
    return COLUMN_NAMES.get(column, column)


def table_columns(part: pl.DataFrame) -> list[str]:
    """The columns of one dataset's table: rank, model, the metrics, then size, speed and reference columns
    that some row has a value for."""
    cols = ["rank", "model", *metric_columns(part), "num_parameters", "train_seconds", "train_samples_per_second",
            "latency_ms", "reference_test", "delta_vs_reference"]
    return [c for c in cols if c in ("rank", "model") or (c in part.columns and part[c].is_not_null().any())]


def _fmt(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in ("num_parameters", "train_samples_per_second"):
        return f"{value:,.0f}"
    if column == "latency_ms":
        return f"{value:.2f}"
    if isinstance(value, float):
        digits = 4 if column.startswith(("val_", "test_", "reference", "delta")) else 1
        return f"{value:.{digits}f}"
    return str(value)


SYNTHETIC_BANNER = ("SYNTHETIC DATA: runs flagged 'synthetic data' trained on the generated dataset with planted "
                    "interactions (conf/data/synthetic.yaml), a smoke test of the pipeline; their numbers say nothing "
                    "about real data.")


def baseline_note(part: pl.DataFrame) -> str | None:
    """The sentence under a table with baseline rows."""
    if "baseline" not in part.columns or not part["baseline"].any():
        return None
    key = part["selection_metric"][0]
    return (f"Baselines (rows named 'baseline: ...', not ranked) learn only counts from train and are scored on the "
            f"same splits (recsys.baselines). BELOW BASELINE flags a run whose validation {metric_name(key)} does not "
            f"beat the best of them.")


def markdown(frame: pl.DataFrame) -> str:
    if frame.is_empty():
        return "(no runs)\n"
    out = []
    if frame["synthetic"].any():
        out.append(f"> **{SYNTHETIC_BANNER}**\n")
    for (dataset,), part in frame.group_by(["dataset"], maintain_order=True):
        flags = [_flags(row) for row in part.iter_rows(named=True)]
        cols = table_columns(part) + (["flags"] if any(flags) else []) + ["run_id"]
        out.append(f"## {dataset}\n")
        out.append("| " + " | ".join(header(c) for c in cols) + " |")
        out.append("|" + "---|" * len(cols))
        for row, flag in zip(part.iter_rows(named=True), flags):
            row["flags"] = flag
            out.append("| " + " | ".join(_fmt(row.get(c), c) for c in cols) + " |")
        note = baseline_note(part)
        out.append(f"\n{note}\n" if note else "")
    return "\n".join(out) + "\n"


def _flags(row: dict[str, Any]) -> str:
    flags = []
    if row.get("baseline"):
        flags.append("baseline")
    if row.get("below_baseline"):
        flags.append(str(row["below_baseline"]))
    if row.get("selected_on") not in ("valid", "val"):
        flags.append(f"SELECTED ON {str(row.get('selected_on')).upper()}")
    if row.get("synthetic"):
        flags.append("synthetic data")
    return "; ".join(flags)


# ---------------------------------------------------------------------------- plots
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


def _run_label(row: dict[str, Any]) -> str:
    return f"{row['model']} {str(row['run_id'])[:6]}"


def _baseline_line(ax, baselines: pl.DataFrame, column: str, mode: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    """The best baseline's value of `column` (the bar a run must clear) as a dashed line, named in the legend."""
    values = baselines.filter(pl.col(column).is_not_null()) if column in baselines.columns else baselines.clear()
    if values.is_empty():
        return
    row = values.sort(column, descending=(mode == "max")).row(0, named=True)
    ax.axhline(row[column], ls="--", lw=1.2, c="grey", label=f"{row['model']} (best baseline)")


def _scatter(ax, part: pl.DataFrame, x: str, y: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One marker per run, each in its own colour and named in the legend, so no labels overlap."""
    markers = "osD^vP*X"
    for i, row in enumerate(part.iter_rows(named=True)):
        ax.scatter([row[x]], [row[y]], marker=markers[i % len(markers)], s=36, label=_run_label(row))


def _plots(dataset: str, part: pl.DataFrame, runs_by_path: dict[str, dict], top: int) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    is_baseline = part["baseline"] if "baseline" in part.columns else pl.Series([False] * part.height)
    baselines, part = part.filter(is_baseline), part.filter(~is_baseline)
    if part.is_empty():
        return []
    best = part.head(top)
    key = part["selection_metric"][0]
    name = metric_name(key)
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
        label = f"{_run_label(row)} ({row.get('test_auc') or float('nan'):.4f})"
        ax_roc.plot(fpr, tpr, label=label)
        mp, rate, _ = reliability(logits, labels)
        ax_cal.plot(mp, rate, marker="o", label=_run_label(row))
        drew = True
    if drew:
        ax_roc.plot([0, 1], [0, 1], ls=":", c="grey", label="constant (AUC 0.5)")
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC on test, best {top} by validation {name}")
        ax_roc.legend(fontsize=8)
        ax_cal.plot([0, 1], [0, 1], ls=":", c="grey")
        ax_cal.set(xlabel="mean predicted probability", ylabel="observed click rate", title="Calibration on test")
        ax_cal.legend(fontsize=8)
        figures += [("ROC curves", figure_svg(fig_roc)), ("Calibration (reliability)", figure_svg(fig_cal))]
    else:
        plt.close(fig_roc)
        plt.close(fig_cal)

    fig, ax = plt.subplots(figsize=(5, 4.2))
    longest = 1
    for row in part.head(max(top, 10)).iter_rows(named=True):
        history = runs_by_path[row["path"]].get("history") or []
        points = [(h["epoch"] + 1, h[key]) for h in history if isinstance(h.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), marker=".", label=_run_label(row))
            longest = max(longest, max(e for e, _ in points))
    mode = part["selection_mode"][0]
    _baseline_line(ax, baselines, f"val_{key}", mode)
    ax.set(xlabel="epoch", ylabel=f"validation {name}", title="Training curves")
    # Whole epochs only, and a visible range even for a single epoch.
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(0.5, longest + 0.5)
    ax.legend(fontsize=7)
    figures.append((f"Validation {name} per epoch", figure_svg(fig)))

    if test_col is None:
        return figures
    fig, ax = plt.subplots(figsize=(5, 4.2))
    _scatter(ax, part, "num_parameters", test_col)
    _baseline_line(ax, baselines, test_col, mode)
    ax.set(xscale="log", xlabel="parameters", ylabel=f"test {name}", title=f"{name} against model size")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels on the decades only: none overlap
    ax.legend(fontsize=7)
    figures.append((f"{name} against parameter count", figure_svg(fig)))

    with_latency = part.filter(pl.col("latency_ms").is_not_null())
    if with_latency.height:
        fig, ax = plt.subplots(figsize=(5, 4.2))
        _scatter(ax, with_latency, "latency_ms", test_col)
        _baseline_line(ax, baselines, test_col, mode)
        ax.set(xlabel="inference latency (ms)", ylabel=f"test {name}", title=f"{name} against latency")
        ax.legend(fontsize=7)
        figures.append((f"{name} against latency", figure_svg(fig)))
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
    batch_size = (run.get("data_options") or {}).get("batch_size", (cfg.get("data") or {}).get("batch_size"))
    picked = {"model": cfg.get("model"), "task": cfg.get("task"), "batch_size": batch_size, "seed": cfg.get("seed")}
    return html.escape(json.dumps(picked, sort_keys=True, default=str, indent=1))


def write_html(path: Path, frame: pl.DataFrame, collection: Collection, top: int) -> None:
    runs_by_path = {r["path"]: r for r in collection.runs}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>recsys-zoo report</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:13px}",
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} th{background:#f3f3f3} td.l{text-align:left}",
             "tr.baseline td{background:#f6f6f6;font-style:italic;color:#444}",
             ".warn{background:#fff3cd;padding:.6em;border:1px solid #e0c36c} .flag{color:#b00;font-weight:bold}",
             ".banner{background:#f8d7da;border:2px solid #c0392b;color:#6b1010;padding:.8em;font-weight:bold;margin-bottom:1em}",
             ".note{font-size:13px;color:#333;max-width:1000px}",
             ".plots{display:flex;flex-wrap:wrap;gap:1em} .plots figure{margin:0} code{font-size:11px;display:block;max-width:420px;white-space:pre-wrap}</style></head><body>"]
    if not frame.is_empty() and frame["synthetic"].any():
        parts.append(f"<div class='banner'>{html.escape(SYNTHETIC_BANNER)}</div>")
    parts += ["<h1>recsys-zoo report</h1>",
              "<p>Ranked within each dataset by the <b>validation</b> metric each run was selected on (AUC for CTR, "
              "NDCG@20 for next-item); test metrics are reported, never used for selection. "
              "A run whose selection used the test split is flagged.</p>"]
    if collection.warnings:
        parts.append("<div class='warn'><b>Warnings</b><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in collection.warnings) + "</ul></div>")
    if frame.is_empty():
        parts.append("<p>No complete runs found.</p>")
    for (dataset,), part in ([] if frame.is_empty() else frame.group_by(["dataset"], maintain_order=True)):
        rows = list(part.iter_rows(named=True))
        runs = [runs_by_path[r["path"]] for r in rows if not r.get("baseline")]
        differs = varying_settings(runs)
        flags = [_flags(r) for r in rows]
        settings = [r.get("description") or "" if r.get("baseline") else differs.get(r["path"], "") for r in rows]
        cols = table_columns(part)
        extra = (["flags"] if any(flags) else []) + (["settings that differ"] if any(settings) else []) + ["hyper-parameters"]
        parts.append(f"<h2>{html.escape(str(dataset))}</h2><table><tr>")
        parts.append("".join(f"<th>{html.escape(header(c))}</th>" for c in cols + extra) + "</tr>")
        for row, flag, setting in zip(rows, flags, settings):
            cells = "".join(f"<td{' class=l' if c == 'model' else ''}>{html.escape(_fmt(row.get(c), c))}</td>" for c in cols)
            if "flags" in extra:
                cells += f"<td class='l flag'>{html.escape(flag)}</td>"
            if "settings that differ" in extra:
                cells += f"<td class=l>{html.escape(setting)}</td>"
            details = "" if row.get("baseline") else (f"<details><summary>show</summary><code>{_hparams(runs_by_path[row['path']])}"
                                                      "</code></details>")
            cells += f"<td class=l>{details}</td>"
            parts.append(f"<tr{' class=baseline' if row.get('baseline') else ''}>{cells}</tr>")
        parts.append("</table>")
        note = baseline_note(part)
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        parts.append("<div class='plots'>")
        for title, svg in _plots(str(dataset), part, runs_by_path, top):
            parts.append(f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def report(runs_dir: str | Path, out: str | Path | None = None, reference: str | Path | None = REFERENCE_CSV, top: int = 5) -> tuple[pl.DataFrame, Collection]:
    collection = collect(runs_dir)
    frame = leaderboard(collection.runs, load_reference(reference), collection.baselines)
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
