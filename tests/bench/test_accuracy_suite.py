"""`recsys bench accuracy` for real on small synthetic data: runs in parallel processes, mean ± sd over
seeds, claims checked on the means, resume without retraining, and a failed run reported by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import SMALL_SYNTHETIC

SMALL = [*SMALL_SYNTHETIC, "trainer.max_epochs=1"]


def _suite(tmp_path: Path, runs: list[dict], claims: list[dict]) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps({"runs": runs, "claims": claims}))  # JSON is YAML
    return path


def _bench(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys.commands.cli", "bench", "accuracy", *args], capture_output=True, text=True,
                          env={**os.environ, "RECSYS_CACHE_DIR": str(cache)}, timeout=600)


def test_suite_runs_seeds_in_parallel_checks_claims_and_resumes(tmp_path: Path) -> None:
    suite = _suite(tmp_path, [{"name": "synthetic/lr", "overrides": ["model=lr"]},
                              {"name": "synthetic/din", "overrides": ["model=din"]}],
                   [{"kind": "better", "a": "synthetic/din", "b": "synthetic/lr"}])
    out = tmp_path / "out"
    done = _bench("--suite", str(suite), "--seeds", "1", "2", "--jobs", "2", "--threads", "1", "--out", str(out), *SMALL,
                  cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "accuracy.json").read_text())
    rows = {r["name"]: r for r in summary["rows"]}
    for name in rows:
        metrics = [json.loads((out / "runs" / name / f"seed-{s}" / "metrics.json").read_text()) for s in (1, 2)]
        aucs = [m["test"]["auc"] for m in metrics]
        assert rows[name]["seeds"] == [1, 2]
        assert rows[name]["test/auc"] == pytest.approx(sum(aucs) / 2)
        assert metrics[0]["config"]["seed"] == 1 and metrics[1]["config"]["seed"] == 2
    (claim,) = summary["claims"]
    diff = rows["synthetic/din"]["test/auc"] - rows["synthetic/lr"]["test/auc"]
    assert claim["metric"] == "test/auc" and claim["difference"] == pytest.approx(diff)
    assert claim["status"] == ("holds" if diff > 0 else "fails")
    assert "| din | 2 |" in (out / "accuracy.md").read_text()

    # The same command again trains nothing: every run has its metrics.json.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/metrics.json")}
    again = _bench("--suite", str(suite), "--seeds", "1", "2", "--out", str(out), *SMALL, cache=tmp_path / "cache")
    assert again.returncode == 0 and "4 runs already done, 0 to go" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_failed_run_is_named_with_its_log_and_the_rest_still_run(tmp_path: Path) -> None:
    suite = _suite(tmp_path, [{"name": "synthetic/lr", "overrides": ["model=lr"]},
                              {"name": "synthetic/broken", "overrides": ["model=lr", "task.learning_rate=oops"]}], [])
    out = tmp_path / "out"
    done = _bench("--suite", str(suite), "--seeds", "1", "--out", str(out), *SMALL, cache=tmp_path / "cache")
    assert done.returncode != 0
    assert "1 run(s) failed" in done.stderr and "synthetic/broken/seed-1.log" in done.stderr
    assert (out / "runs" / "synthetic/lr" / "seed-1" / "metrics.json").exists()
    failures = json.loads((out / "accuracy.json").read_text())["failures"]
    assert [f["name"] for f in failures] == ["synthetic/broken"]


def test_unknown_suite_and_claims_on_missing_runs_are_named(tmp_path: Path) -> None:
    from recsys.bench.accuracy import load_suite

    with pytest.raises(SystemExit, match="unknown suite 'nope'.*sequence"):
        load_suite("nope")
    bad = _suite(tmp_path, [{"name": "a/x", "overrides": []}], [{"kind": "better", "a": "a/x", "b": "a/y"}])
    with pytest.raises(SystemExit, match=r"not in the suite: \['a/y'\]"):
        load_suite(str(bad))
    runs, claims = load_suite("sequence")  # the shipped suite is well-formed
    assert len(runs) == 13 and len(claims) == 7


def test_a_suite_can_take_another_suites_claims() -> None:
    """search_short runs search's rows at a cut budget and is judged by the same claims (one list of them)."""
    from recsys.bench.accuracy import load_suite

    short_runs, short_claims = load_suite("search_short")
    full_runs, full_claims = load_suite("search")
    assert [r.name for r in short_runs] == [r.name for r in full_runs]
    assert len(full_claims) == 26 and short_claims == full_claims


def _fake_run(out: Path, name: str, seed: int, test: dict, monitor: str = "val/auc") -> None:
    path = out / "runs" / name / f"seed-{seed}"
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({
        "monitor": monitor, "val": {k: v for k, v in test.items()}, "test": test, "epochs": 3, "train_seconds": 1.0,
        "num_parameters": 10, "dataset": "d"}))


@pytest.mark.parametrize(("kind", "tolerance", "a", "b", "holds"), [
    ("within", 0.003, 0.781, 0.760, False),  # SDIM .021 above DIN-long is not "within .003"
    ("within", 0.003, 0.759, 0.760, True),
    ("within", 0.003, 0.757, 0.760, True),
    ("within", 0.003, 0.756, 0.760, False),
    ("at_least", 0.003, 0.781, 0.760, True),  # one-sided: a >= b - tol
    ("at_least", 0.003, 0.7565, 0.760, False),
    ("at_least", 0.0, 0.760, 0.760, True),
    ("better", 0.0, 0.760, 0.760, False),
    ("better", 0.0, 0.7601, 0.760, True),
])
def test_claim_rules_on_seed_means(tmp_path: Path, kind: str, tolerance: float, a: float, b: float, holds: bool) -> None:
    from recsys.bench.accuracy import SuiteRun, claim_text, summarise

    out = tmp_path / "out"
    # Two seeds per row whose means are a and b; seed 2 of row a is below b's, so the per-seed count differs.
    _fake_run(out, "t/a", 1, {"auc": a + 0.002})
    _fake_run(out, "t/a", 2, {"auc": a - 0.002})
    _fake_run(out, "t/b", 1, {"auc": b})
    _fake_run(out, "t/b", 2, {"auc": b})
    claim = {"kind": kind, "a": "t/a", "b": "t/b", "tolerance": tolerance}
    (checked,) = summarise(out, [SuiteRun("t/a", None), SuiteRun("t/b", None)], [1, 2], [claim])["claims"]
    assert checked["status"] == ("holds" if holds else "fails"), checked
    assert checked["difference"] == pytest.approx(a - b)
    text = claim_text(checked)
    assert {"within": "|t/a − t/b| ≤", "at_least": "t/a ≥ t/b", "better": "t/a > t/b"}[kind] in text
    if kind == "at_least" and tolerance:
        assert f"− {tolerance:g}" in text  # a one-sided tolerance is in the claim's own words


def test_claims_default_to_the_selection_metric_and_may_name_another(tmp_path: Path) -> None:
    from recsys.bench.accuracy import SuiteRun, summarise

    out = tmp_path / "out"
    _fake_run(out, "s/mqsa", 1, {"ndcg@20": 0.08, "ndcg@10": 0.05}, monitor="val/ndcg@20")
    _fake_run(out, "s/sasrec", 1, {"ndcg@20": 0.07, "ndcg@10": 0.06}, monitor="val/ndcg@20")
    runs = [SuiteRun("s/mqsa", None), SuiteRun("s/sasrec", None)]
    default, named = summarise(out, runs, [1], [{"kind": "better", "a": "s/mqsa", "b": "s/sasrec"},
                                                {"kind": "better", "a": "s/mqsa", "b": "s/sasrec", "metric": "test/ndcg@10"}])["claims"]
    assert default["metric"] == "test/ndcg@20" and default["status"] == "holds"
    assert named["status"] == "fails" and named["difference"] == pytest.approx(-0.01)


def test_the_tables_carry_their_datasets_baselines_and_flag_rows_below_them(tmp_path: Path) -> None:
    from recsys.bench.accuracy import SuiteRun, markdown, summarise

    out = tmp_path / "out"
    for name, auc in (("t/strong", 0.80), ("t/weak", 0.70)):
        for seed in (1, 2):
            _fake_run(out, name, seed, {"auc": auc, "logloss": 0.5})
            payload = {"version": 1, "task": "ctr", "dataset": "d", "data_fingerprint": "f00d",
                       "baselines": [{"model": "baseline: constant", "val": {"auc": 0.5, "logloss": 0.69}, "test": {"auc": 0.5, "logloss": 0.69}},
                                     {"model": "baseline: u+i rate", "val": {"auc": 0.75, "logloss": 0.6}, "test": {"auc": 0.74, "logloss": 0.6}}]}
            (out / "runs" / name / f"seed-{seed}" / "baselines.json").write_text(json.dumps(payload))
    summary = summarise(out, [SuiteRun("t/strong", None), SuiteRun("t/weak", None)], [1, 2], [])
    assert [b["model"] for b in summary["baselines"]["t"]] == ["baseline: constant", "baseline: u+i rate"]  # once, not per seed
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["t/weak"]["below_baseline"] == "baseline: u+i rate" and rows["t/strong"]["below_baseline"] is None
    table = markdown(summary)
    assert "| baseline: u+i rate | — | 0.7500 | 0.7400 |" in table
    assert "| weak | 2 |" in table and table.count("BELOW BASELINE (baseline: u+i rate)") == 1
@pytest.mark.parametrize(("kind", "factor", "tolerance", "holds", "wins"), [
    # seed means 40 against 100; per seed 30 and 50 against 100. wins: seeds where a is on the claim's side of
    # the scaled b (under it for at_most, over it otherwise), not counting a tie.
    ("at_most", 0.5, 0.0, True, 1),    # 40 <= 0.5 * 100; per seed 30 < 50, 50 = 50
    ("at_most", 0.3, 0.0, False, 0),   # 40 > 30; per seed 30 = 30, 50 > 30
    ("at_most", 0.3, 10.0, True, 0),   # 40 <= 30 + 10
    ("at_least", 0.5, 0.0, False, 0),  # 40 < 50; per seed 30 < 50, 50 = 50
    ("better", 0.3, 0.0, True, 1),     # 40 > 30; per seed 30 = 30, 50 > 30
])
def test_claims_on_a_top_level_number_scaled_by_a_factor(tmp_path: Path, kind: str, factor: float, tolerance: float,
                                                         holds: bool, wins: int) -> None:
    from recsys.bench.accuracy import SuiteRun, claim_text, load_suite, markdown, summarise

    out = tmp_path / "out"
    for name, params in (("t/small", (30, 50)), ("t/big", (100, 100))):
        for seed, n in zip((1, 2), params):
            _fake_run(out, name, seed, {"auc": 0.8})
            path = out / "runs" / name / f"seed-{seed}" / "metrics.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "num_parameters": n}))
    claim = {"kind": kind, "a": "t/small", "b": "t/big", "metric": "num_parameters", "factor": factor, "tolerance": tolerance}
    summary = summarise(out, [SuiteRun("t/small", None), SuiteRun("t/big", None)], [1, 2], [claim])
    (checked,) = summary["claims"]
    assert summary["rows"][0]["num_parameters"] == 40  # the seed mean, as seeds may have searched other sizes
    assert checked["status"] == ("holds" if holds else "fails") and checked["difference"] == pytest.approx(40 - factor * 100)
    assert checked["seeds_where_a_wins"] == wins and checked["seeds_compared"] == 2
    assert f"{factor:g} × t/big" in claim_text(checked)
    # The table gives a size claim as the ratio of the two sizes themselves (40 of 100), not of the scaled b.
    assert "(0.40×)" in markdown(summary)
    suite = _suite(tmp_path, [{"name": "t/small"}, {"name": "t/big"}], [claim])
    assert load_suite(str(suite))[1] == [claim]


def test_a_search_entry_searches_then_retrains_its_architecture_and_resumes_at_the_retrain(tmp_path: Path) -> None:
    tiny = ["model.hidden_units=[16]", "model.embedding_dim=4", "model.pair_dim=3", "model.cross_buckets=300"]
    suite = _suite(tmp_path, [
        {"name": "synthetic/optinter", "overrides": ["model=optinter", *tiny],
         "search": {"overrides": ["model=optinter", "task=search", *tiny]}},
    ], [])
    out = tmp_path / "out"
    done = _bench("--suite", str(suite), "--seeds", "1", "--out", str(out), *SMALL, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    run = out / "runs" / "synthetic/optinter" / "seed-1"
    search = json.loads((run / "search" / "metrics.json").read_text())
    retrain = json.loads((run / "metrics.json").read_text())
    assert search["task"] == "search" and "test" not in search and search["config"]["seed"] == 1
    chosen = run / "search" / "architecture.json"
    assert retrain["config"]["model"]["architecture"] == str(chosen)
    assert retrain["architecture"]["sha256"] == __import__("recsys.search").search.file_digest(chosen)
    summary = json.loads((out / "accuracy.json").read_text())
    row = next(r for r in summary["rows"] if r["name"] == "synthetic/optinter")
    pairs = json.loads(chosen.read_text())["pairs"]
    assert row["share/memorise"] == pytest.approx(sum(m == "memorise" for m in pairs.values()) / len(pairs), abs=1e-4)
    assert row["search_fit_seconds"] == pytest.approx(search["fit_seconds"])
    assert row["num_parameters"] == retrain["num_parameters"]
    assert "search s" in (out / "accuracy.md").read_text() and "### Architectures" in (out / "accuracy.md").read_text()

    # Interrupted after its search: the rerun retrains from the same file and does not search again.
    (run / "metrics.json").unlink()
    search_stamp = (run / "search" / "metrics.json").stat().st_mtime_ns
    again = _bench("--suite", str(suite), "--seeds", "1", "--out", str(out), *SMALL, cache=tmp_path / "cache")
    assert again.returncode == 0 and "0 runs already done, 1 to go" in again.stdout
    assert (run / "search" / "metrics.json").stat().st_mtime_ns == search_stamp
    assert json.loads((run / "metrics.json").read_text())["architecture"]["sha256"] == retrain["architecture"]["sha256"]


def test_a_row_still_improving_at_its_epoch_cap_is_flagged_and_so_are_its_claims(tmp_path: Path) -> None:
    from recsys.bench.accuracy import SuiteRun, markdown, summarise

    out = tmp_path / "out"
    # (epochs run, best epoch, cap): capped = ran every allowed epoch and selected the last one.
    histories = {"t/capped": [(10, 9, 10), (10, 9, 10)], "t/stopped": [(10, 8, 10), (6, 5, 100)]}
    for name, seeds in histories.items():
        for seed, (epochs, best, cap) in enumerate(seeds, start=1):
            _fake_run(out, name, seed, {"auc": 0.8})
            path = out / "runs" / name / f"seed-{seed}" / "metrics.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "epochs": epochs, "best_epoch": best,
                                        "config": {"trainer": {"max_epochs": cap}}}))
    runs = [SuiteRun("t/capped", None), SuiteRun("t/stopped", None)]
    summary = summarise(out, runs, [1, 2], [{"kind": "at_least", "a": "t/capped", "b": "t/stopped"},
                                            {"kind": "at_least", "a": "t/stopped", "b": "t/stopped"},
                                            {"kind": "at_most", "a": "t/capped", "b": "t/stopped", "metric": "num_parameters"}])
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["t/capped"]["seeds_at_epoch_cap"] == [1, 2] and rows["t/stopped"]["seeds_at_epoch_cap"] == []
    flagged, clean, size = summary["claims"]
    assert flagged["rows_at_epoch_cap"] == ["t/capped"] and "rows_at_epoch_cap" not in clean
    assert "rows_at_epoch_cap" not in size  # a parameter count is what it is at any epoch
    table = markdown(summary)
    assert table.count("AT EPOCH CAP (2/2 seeds)") == 1
    assert "holds (not converged: t/capped stopped at the epoch cap)" in table


def test_the_plot_has_a_panel_per_table_and_only_rows_that_ran(tmp_path: Path) -> None:
    """accuracy.svg: one panel per table; each row that has its test metric and a size is a named point; a row
    whose runs did not finish is left out; the x axis is embedding parameters only where every row has them."""
    from recsys.bench.accuracy import plot

    def row(table: str, name: str, auc: float | None, params: int, embedding: int | None) -> dict:
        r = {"table": table, "row": name, "name": f"{table}/{name}", "selection_metric": "val/auc", "num_parameters": params}
        if auc is not None:
            r.update({"test/auc": auc, "test/auc_sd": 0.001})
        if embedding is not None:
            r["num_embedding_parameters"] = embedding
        return r

    summary = {"seeds": [1, 2, 3], "rows": [
        row("frappe", "deepfm", 0.98, 400_000, 60_000), row("frappe", "dnis_half", 0.97, 370_000, 29_000),
        row("frappe", "never_finished", None, 500_000, 80_000),
        row("ml1m", "deepfm", 0.81, 200_000, 145_000), row("ml1m", "no_embedding_count", 0.80, 100_000, None),
        {"table": "empty", "row": "x", "name": "empty/x"},  # a row with no finished seed at all
    ]}
    svg = plot(summary)
    assert svg is not None and svg.lstrip().startswith(("<?xml", "<svg"))
    for text in ("frappe (mean ± sd over 3 seeds)", "ml1m (mean ± sd over 3 seeds)", "dnis_half", "no_embedding_count"):
        assert text in svg
    assert "never_finished" not in svg and "empty (" not in svg
    # frappe's rows all count embedding parameters; ml1m's do not, so its axis is every parameter.
    assert svg.count(">embedding parameters<") == 1 and svg.count(">parameters<") == 1
    assert plot({"seeds": [1], "rows": [row("t", "r", None, 10, 5)]}) is None
