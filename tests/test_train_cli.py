"""`recsys train` and `recsys bench zoo` end to end, through the console command, on small synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REQUIRED = {"model", "dataset", "val", "test", "best_epoch", "epochs", "train_seconds", "train_samples_per_second", "num_parameters"}


def _recsys(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_writes_metrics_checkpoint_and_features(tmp_path) -> None:
    out = tmp_path / "run"
    proc = _recsys(
        "train", "model=fm", "data=synthetic", "data.synthetic.n_train=4000", "data.synthetic.n_valid=1000",
        "data.synthetic.n_test=1000", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics)
    assert metrics["model"] == "fm" and metrics["dataset"] == "synthetic_ctr" and metrics["synthetic_data"] is True
    assert {"auc", "logloss", "gauc"} <= set(metrics["val"]) and {"auc", "logloss"} <= set(metrics["test"])
    assert 0.5 < metrics["val"]["auc"] <= 1.0 and metrics["epochs"] == 2 and metrics["num_parameters"] > 0
    assert (out / metrics["checkpoint"]).exists()
    assert (out / "features" / "schema.json").exists() and (out / "features" / "vocab" / "item.parquet").exists()
    assert metrics["selected_on"] == "valid" and len(metrics["history"]) == 2
    assert len(metrics["run_id"]) == 12 and "torch" in metrics["environment"]["packages"]


def test_unknown_model_and_missing_data_root_fail_with_a_named_reason(tmp_path) -> None:
    proc = _recsys("train", "model=nope", cwd=tmp_path)
    assert proc.returncode != 0 and "nope" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_DATA_DIR"}
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "train", "experiment=lr_frappe_x1",
                           f"paths.output_dir={tmp_path / 'x'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "RECSYS_DATA_DIR" in proc.stderr


def test_main_job_falls_back_to_labelled_synthetic_data_and_ranks_on_validation(tmp_path) -> None:
    env = {"RECSYS_DATA_DIR": str(tmp_path / "no-data-here"), "RECSYS_CACHE_DIR": str(tmp_path / "cache")}
    proc = _recsys("bench", "zoo", "--models", "lr,fm", "--max-epochs", "2", "--out", str(tmp_path / "zoo"), cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SYNTHETIC" in proc.stdout
    board = (tmp_path / "zoo" / "leaderboard.md").read_text()
    assert "SYNTHETIC" in board
    rows = [line for line in board.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 2
    vals = [float(r.split("|")[3]) for r in rows]
    assert vals == sorted(vals, reverse=True)


def test_run_id_ignores_where_a_run_writes_but_not_what_it_computes() -> None:
    from recsys.runinfo import environment, run_id

    base = {"seed": 1, "model": {"_target_": "x", "dim": 10}, "paths": {"output_dir": "a"}, "trainer": {"max_epochs": 3, "enable_progress_bar": True}}
    moved = {**base, "paths": {"output_dir": "b"}, "trainer": {"max_epochs": 3, "enable_progress_bar": False}}
    changed = {**base, "model": {"_target_": "x", "dim": 16}}
    assert run_id(base) == run_id(moved) != run_id(changed)
    env = environment()
    assert {"python", "packages", "git_commit", "device"} <= set(env) and "torch" in env["packages"]
