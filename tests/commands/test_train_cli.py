"""`recsys train` and `recsys bench zoo` end to end, through the console command, on small synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REQUIRED = {"model", "dataset", "val", "test", "best_epoch", "epochs", "train_seconds", "train_samples_per_second", "num_parameters"}


def _recsys(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "recsys.commands.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


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
    assert (out / metrics["checkpoint"]).exists() and (out / ".hydra" / "config.yaml").exists()
    assert (out / "features" / "schema.json").exists() and (out / "features" / "vocab" / "item.parquet").exists()
    assert metrics["selected_on"] == "valid" and len(metrics["history"]) == 2
    assert len(metrics["run_id"]) == 12 and "torch" in metrics["environment"]["packages"]


def test_unknown_model_and_missing_data_root_fail_with_a_named_reason(tmp_path) -> None:
    proc = _recsys("train", "model=nope", cwd=tmp_path)
    assert proc.returncode != 0 and "nope" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_DATA_DIR"}
    proc = subprocess.run([sys.executable, "-m", "recsys.commands.cli", "train", "experiment=lr_frappe_x1",
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


def test_sweep_resumes_finished_runs_and_records_failures(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "model=lr", "data=synthetic", "data.synthetic.n_train=2000", "data.synthetic.n_valid=500",
            "data.synthetic.n_test=500", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "task.learning_rate=1e-3,-1.0", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = _recsys(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    finished = list(sweep.rglob("metrics.json"))
    failed = list(sweep.rglob("error.json"))
    assert len(finished) == 1 and len(failed) == 1  # a negative learning rate fails; the sweep goes on
    assert (finished[0].parent / "checkpoints" / "best.ckpt").exists()  # each job keeps its own files
    assert "learning rate" in json.loads(failed[0].read_text())["error"].lower()
    stamp = finished[0].stat().st_mtime_ns
    second = _recsys(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already finished" in second.stderr + second.stdout
    assert finished[0].stat().st_mtime_ns == stamp  # not retrained


def test_sweep_configs_compose_with_their_sweepers() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="recsys.conf", version_base="1.3"):
        grid = compose("train", overrides=["hparams_search=frappe_grid"], return_hydra_config=True)
        optuna = compose("train", overrides=["experiment=finalmlp_frappe_x1", "hparams_search=finalmlp_optuna"], return_hydra_config=True)
        joblib = compose("train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    assert grid.hydra.sweeper.params.experiment == "lr_frappe_x1,fm_frappe_x1,deepfm_frappe_x1"
    assert "optuna" in optuna.hydra.sweeper._target_.lower() and optuna.hydra.sweeper.direction == "maximize"
    assert "task.learning_rate" in optuna.hydra.sweeper.params and optuna.data.name == "frappe_x1"
    assert "joblib" in joblib.hydra.launcher._target_.lower()
    GlobalHydra.instance().clear()


def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path) -> None:
    """Two gloo processes, each on half of every global batch, reach the validation AUC of one process
    on whole batches. LR has no batch norm or dropout and the L2 penalty is off, so the only differences
    are float summation order: the AUCs must agree to 1e-3."""
    common = ["train", "model=lr", "data=synthetic", "data.synthetic.n_train=8192", "data.synthetic.n_valid=2000",
              "data.synthetic.n_test=2000", "data.batch_size=512", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
              "trainer.accelerator=cpu", "callbacks.early_stopping.patience=10", f"paths.cache_dir={tmp_path / 'cache'}"]
    single = _recsys(*common, f"paths.output_dir={tmp_path / 'single'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _recsys(*common, "+trainer.strategy=ddp", "trainer.devices=2", f"paths.output_dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert abs(one["val"]["auc"] - two["val"]["auc"]) < 1e-3, (one["val"], two["val"])
    assert [round(h["auc"], 3) for h in one["history"]] == [round(h["auc"], 3) for h in two["history"]]


def test_ddp_counts_memorised_values_on_every_rank_as_one_process_does(tmp_path) -> None:
    """OptInter-M with a minimum count under two gloo processes: each rank counts the whole training split
    (not its shard) into the same int32 index, which DDP's buffer broadcast carries, so the trained
    checkpoint holds the vocabulary of a one-process run."""
    common = ["train", "model=optinter_m", "model.cross_min_count=3", "model.hidden_units=[16]", "model.embedding_dim=4",
              "model.pair_dim=3", "data=synthetic", "data.synthetic.n_train=4096", "data.synthetic.n_valid=1000",
              "data.synthetic.n_test=1000", "data.batch_size=512", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
              "trainer.accelerator=cpu", f"paths.cache_dir={tmp_path / 'cache'}"]
    single = _recsys(*common, f"paths.output_dir={tmp_path / 'single'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _recsys(*common, "+trainer.strategy=ddp", "trainer.devices=2", f"paths.output_dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    states = [torch.load(tmp_path / run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
              for run in ("single", "ddp")]
    (key,) = [k for k in states[0] if k.endswith("__cross_index")]
    one, two = states[0][key], states[1][key]
    assert one.dtype == two.dtype == torch.int32 and torch.equal(one, two)
    table = key.replace("__cross_index", "").replace("embedding.", "embedding.weights.")
    rows = states[0][table].shape[0]
    assert states[1][table].shape[0] == rows and 10 < rows < one.numel() / 2  # 10 pairs' rare rows and some kept values


def test_optuna_sweep_runs_trials_and_maximises_validation_auc(tmp_path) -> None:
    sweep = tmp_path / "optuna"
    proc = _recsys(
        "train", "-m", "model=finalmlp", "data=synthetic", "data.synthetic.n_train=2000", "data.synthetic.n_valid=500",
        "data.synthetic.n_test=500", "model.fs1_context=[]", "model.fs2_context=[]", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "hparams_search=finalmlp_optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert len(runs) == 2 and len({r["run_id"] for r in runs}) == 2  # two different sampled settings
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in best and f"{max(r['val']['auc'] for r in runs):.6f}"[:6] in best
