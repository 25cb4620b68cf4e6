"""`recsys report`: the collector's handling of bad metrics files, the leaderboard order and flags, the
reference deltas, and an HTML report that carries its plots inline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.commands.report import collect, leaderboard, markdown, reliability, report, roc_points


def _metrics(model: str, val: float, test: float, **extra) -> dict:
    return {
        "run_id": f"id-{model}-{val}", "model": model, "dataset": "frappe_x1",
        "val": {"auc": val, "logloss": 0.2, "gauc": 0.9}, "test": {"auc": test, "logloss": 0.21},
        "best_epoch": 3, "epochs": 5, "train_seconds": 10.0, "train_samples_per_second": 1000.0, "num_parameters": 1234,
        "selected_on": "valid", "history": [{"epoch": e, "auc": 0.9 + 0.01 * e, "lr": 1e-3} for e in range(5)],
        "config": {"model": {"dim": 10}, "task": {"learning_rate": 1e-3}, "seed": 1}, **extra,
    }


def _write(root: Path, name: str, payload) -> Path:
    (root / name).mkdir(parents=True)
    text = payload if isinstance(payload, str) else json.dumps(payload)
    (root / name / "metrics.json").write_text(text)
    return root / name


def test_collector_warns_on_corrupted_partial_missing_and_failed_runs(tmp_path) -> None:
    _write(tmp_path, "good", _metrics("fm", 0.97, 0.968))
    _write(tmp_path, "corrupt", '{"model": "fm", "val": {')
    partial = _metrics("deepfm", 0.98, 0.979)
    del partial["test"]
    _write(tmp_path, "partial", partial)
    (tmp_path / "interrupted" / "checkpoints").mkdir(parents=True)
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "error.json").write_text(json.dumps({"error": "ValueError: boom"}))
    found = collect(tmp_path)
    assert [r["model"] for r in found.runs] == ["fm"]
    text = "\n".join(found.warnings)
    assert "corrupted metrics file" in text and "corrupt/metrics.json" in text
    assert "partial metrics file" in text and "missing ['test']" in text
    assert "no metrics.json in run folder" in text and "interrupted" in text
    assert "failed run" in text and "ValueError: boom" in text


def test_a_run_whose_selection_metric_is_not_a_number_is_left_out_with_a_warning(tmp_path) -> None:
    _write(tmp_path, "good", _metrics("fm", 0.97, 0.968))
    _write(tmp_path, "nan", _metrics("deepfm", float("nan"), 0.5))
    _write(tmp_path, "text", _metrics("lr", "0.99", 0.5))
    found = collect(tmp_path)
    assert [r["model"] for r in found.runs] == ["fm"]
    text = "\n".join(found.warnings)
    assert "nan/metrics.json: its selection metric val.auc is nan" in text
    assert "text/metrics.json: its selection metric val.auc is '0.99'" in text


def test_next_item_runs_rank_on_their_own_metric_and_min_mode_ranks_low_first(tmp_path) -> None:
    def seq(model: str, ndcg20: float) -> dict:
        m = _metrics(model, 0.0, 0.0)
        m.update(dataset="beauty", task="next_item", monitor="val/ndcg@20", mode="max",
                 val={"ndcg@20": ndcg20, "hr@10": 0.1}, test={"ndcg@20": ndcg20 - 0.01, "ndcg@10": 0.05})
        return m

    runs = [seq("sasrec", 0.05), seq("mqsa_ted", 0.07), {**_metrics("a", 0.2, 0.2), "monitor": "val/logloss", "mode": "min",
                                                          "dataset": "d"},
            {**_metrics("b", 0.1, 0.1), "monitor": "val/logloss", "mode": "min", "dataset": "d"}]
    for r in runs:
        r["path"] = str(tmp_path)
    runs[2]["val"]["logloss"], runs[3]["val"]["logloss"] = 0.3, 0.2
    frame = leaderboard(runs)
    assert frame.filter(pl.col("dataset") == "beauty")["model"].to_list() == ["mqsa_ted", "sasrec"]
    assert frame.filter(pl.col("dataset") == "d")["model"].to_list() == ["b", "a"]
    table = markdown(frame)
    beauty = table.split("## beauty")[1].split("## ")[0]
    header = beauty.strip().splitlines()[0]
    assert header.index("val NDCG@20") < header.index("test NDCG@20") < header.index("test NDCG@10")
    assert "val AUC" not in beauty  # a column no run of the dataset has is left out


def test_leaderboard_ranks_on_validation_flags_test_selection_and_shows_reference_delta(tmp_path) -> None:
    runs = [_metrics("fm", 0.96, 0.99), _metrics("deepfm", 0.98, 0.97), _metrics("lr", 0.93, 0.93, selected_on="test")]
    for r in runs:
        r["path"] = str(tmp_path)
    frame = leaderboard(runs, {("frappe_x1", "deepfm", "test_auc"): (0.984243, "BARS")})
    assert frame["model"].to_list() == ["deepfm", "fm", "lr"]  # by val AUC, although fm has the best test AUC
    assert frame["rank"].to_list() == [1, 2, 3]
    assert frame["delta_vs_reference"][0] == pytest.approx(0.97 - 0.984243)
    table = markdown(frame)
    assert "SELECTED ON TEST" in table and table.count("SELECTED ON TEST") == 1


def test_roc_and_reliability_points() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000).astype(float)
    logits = rng.normal(labels * 1.5, 1.0)
    fpr, tpr = roc_points(logits, labels)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    area = np.trapezoid(tpr, fpr)
    from sklearn.metrics import roc_auc_score

    assert area == pytest.approx(roc_auc_score(labels, logits), abs=0.01)
    mean_p, rate, count = reliability(logits, labels)
    assert count.sum() == 2000 and np.all((mean_p >= 0) & (mean_p <= 1)) and np.all((rate >= 0) & (rate <= 1))


def test_report_writes_csv_markdown_and_offline_html(tmp_path) -> None:
    for model, val in (("fm", 0.97), ("deepfm", 0.98)):
        run = _write(tmp_path / "runs", model, _metrics(model, val, val - 0.001))
        rng = np.random.default_rng(1)
        labels = rng.integers(0, 2, 500).astype(np.float32)
        pl.DataFrame({"split": "test", "logit": rng.normal(labels, 1.0).astype(np.float32), "label": labels}).write_parquet(run / "predictions.parquet")
    _write(tmp_path / "runs", "broken", "not json")
    frame, collection = report(tmp_path / "runs", tmp_path / "out")
    assert frame.height == 2 and len(collection.warnings) == 1
    csv = pl.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert csv["model"].to_list() == ["deepfm", "fm"] and "reference_test" in csv.columns
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") >= 4  # ROC, calibration, training curves, AUC vs parameters
    import re

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from a CDN or the web
    assert "<script" not in page
    assert "corrupted metrics file" in page and "0.9842" in page  # BARS DeepFM reference is shown


def test_varying_settings_names_only_what_differs() -> None:
    from recsys.commands.report import varying_settings

    a, b = _metrics("fm", 0.9, 0.9), _metrics("fm", 0.91, 0.9)
    b["config"] = {"model": {"dim": 10}, "task": {"learning_rate": 3e-3}, "seed": 1}
    a["path"], b["path"] = "a", "b"
    assert varying_settings([a, b]) == {"a": "task.learning_rate=0.001", "b": "task.learning_rate=0.003"}


def _baselines(dataset: str, fingerprint: str, constant: float, rate: float, synthetic: bool = False) -> dict:
    def scores(auc: float) -> dict:
        return {"auc": auc, "logloss": 0.5, "gauc": auc}

    return {"version": 1, "task": "ctr", "dataset": dataset, "data_fingerprint": fingerprint, "synthetic_data": synthetic,
            "baselines": [{"name": "constant", "model": "baseline: constant", "val": scores(constant), "test": scores(constant)},
                          {"name": "target rate", "model": "baseline: user+item rate", "description": "rates",
                           "val": scores(rate), "test": scores(rate - 0.01)}]}


def test_baselines_are_rows_of_their_dataset_and_a_run_below_them_is_flagged(tmp_path) -> None:
    for model, val in (("deepfm", 0.95), ("lr", 0.90)):
        run = _write(tmp_path / "runs", model, {**_metrics(model, val, val), "data_fingerprint": "abcdef0123"})
        (run / "baselines.json").write_text(json.dumps(_baselines("frappe_x1", "abcdef0123", 0.5, 0.93)))
    frame, _ = report(tmp_path / "runs", tmp_path / "out", reference=None)
    assert frame["model"].to_list() == ["deepfm", "baseline: user+item rate", "lr", "baseline: constant"]
    assert frame["rank"].to_list() == [1, None, 2, None]  # baselines are placed, not ranked
    assert frame["baseline"].to_list() == [False, True, False, True]
    table = markdown(frame)
    lr_row = next(line for line in table.splitlines() if line.startswith("| 2 | lr "))
    deepfm_row = next(line for line in table.splitlines() if line.startswith("| 1 | deepfm "))
    assert "BELOW BASELINE (baseline: user+item rate: val AUC 0.9300)" in lr_row and "BELOW" not in deepfm_row
    assert "|  | baseline: constant | 0.5000 |" in table
    header = table.split("## frappe_x1")[1].strip().splitlines()[0]
    # test gAUC: the baselines have it, although these runs do not
    assert header.startswith("| rank | model | val AUC | test AUC | val logloss | val gAUC | test logloss | test gAUC | params | train s |")
    assert "latency" not in header and "published" not in header  # no run has them
    assert "SYNTHETIC" not in table
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<tr class=baseline>") == 2 and "BELOW BASELINE" in page
    assert "<th>val logloss</th>" in page and "class='banner'" not in page


def test_synthetic_runs_put_a_banner_on_top(tmp_path) -> None:
    _write(tmp_path / "runs", "fm", {**_metrics("fm", 0.7, 0.7), "synthetic_data": True})
    frame, _ = report(tmp_path / "runs", tmp_path / "out", reference=None)
    assert markdown(frame).startswith("> **SYNTHETIC DATA")
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index("class='banner'") < page.index("<h1>")
