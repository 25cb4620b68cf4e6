"""`recsys bench streaming` at a tiny size, end to end through the command: every step in its own child
with its own peak RSS, every table row, and the checks against the issue's goals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recsys.bench.streaming import _child, parse_rows, summarise


def test_row_counts_read_with_units() -> None:
    assert [parse_rows(t) for t in ("10M", "30m", "250k", "1000", "1.5M")] == [10_000_000, 30_000_000, 250_000, 1000, 1_500_000]


def test_a_step_reports_its_own_peak_memory_not_its_parents() -> None:
    ballast = bytearray(700 * 2**20)  # this process is now 700 MiB bigger than the child will be
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])
    bare = _child("baseline", {})
    assert 0.01 < bare["peak_rss_gib"] < 0.6  # a bare child with torch and polars: a few hundred MiB
    del ballast


def test_a_tiny_run_measures_every_step_per_size_and_compares_memory_with_disk(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.commands.cli", "bench", "streaming", "--data-dir", str(tmp_path / "data"),
         "--sizes", "6k,12k", "--train-rows", "6k", "--eval-rows", "2k", "--part-rows", "3k", "--batch-size", "500",
         "--block-rows", "1000", "--train-steps", "6", "--warmup-steps", "2", "--turns", "2", "--threads", "1", "--model", "lr",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "streaming.json").read_text())
    assert [s["rows"] for s in result["sizes"]] == [6_000, 12_000]
    for size in result["sizes"]:
        assert size["loader"]["rows"] == size["rows"] == size["arrays"]["rows"]
        for step in ("fit", "transform", "arrays", "loader"):
            assert 0 < size[step]["peak_rss_gib"] < 4 and size[step]["seconds"] > 0
        loader = size["loader"]
        # The pass's own CPU time (not the wall time, not a whole process's), and the arrays it read.
        assert 0 < loader["cpu_seconds"] <= 2 * loader["seconds"] + 0.05
        assert loader["arrays_gib"] == pytest.approx(size["arrays"]["arrays_gib"]) and loader["read_gib"] >= 0
    assert not (tmp_path / "data" / "prepared-12000").exists()  # deleted once measured (no --keep)
    runs = result["train"]["runs"]
    assert [r["contender"] for r in runs] == ["memory (global order)", "memory (block order)", "disk (block order)"] * 2
    assert all(r["steps"] == 6 and r["rows_per_second"] > 0 for r in runs)
    by = {r["contender"]: r["test_auc"] for r in runs}
    assert by["memory (block order)"] == pytest.approx(by["disk (block order)"], abs=1e-6)  # the same batches
    checks = result["checks"]
    assert set(checks["cost_per_row_largest_over_smallest"]) == {"fit", "transform", "arrays", "loader", "loader_cpu"}
    assert {"rss_goals_met", "throughput_goal_met", "auc_goal_met"} <= set(checks)
    table = (out / "streaming.md").read_text()
    assert "| 6,000 |" in table and "| 12,000 |" in table and "| disk (block order) |" in table
    assert summarise(result)[0] in proc.stdout
