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
                   [{"kind": "better", "a": "synthetic/din", "b": "synthetic/lr"},
                    {"kind": "within", "a": "synthetic/lr", "b": "synthetic/din", "tolerance": 1.0}])
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
        assert rows[name]["test_auc"] == pytest.approx(sum(aucs) / 2)
        assert metrics[0]["config"]["seed"] == 1 and metrics[1]["config"]["seed"] == 2
    claims = {c["kind"]: c for c in summary["claims"]}
    diff = rows["synthetic/din"]["test_auc"] - rows["synthetic/lr"]["test_auc"]
    assert claims["better"]["difference"] == pytest.approx(diff)
    assert claims["better"]["status"] == ("holds" if diff > 0 else "fails")
    assert claims["within"]["status"] == "holds"  # a tolerance of a whole AUC point
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
    assert len(runs) == 12 and len(claims) == 7
