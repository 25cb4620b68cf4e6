"""Real training on real data: FinalMLP on Frappe_x1 (BARS settings) for a few epochs.

A model that lost its feature interactions tops out near LR's .936 on this set, and one that does not
learn stays near .5; four epochs of a working FinalMLP reach about .977 on validation."""

from __future__ import annotations

from recsys.bench import compose_train_config
from recsys.train import train


def test_finalmlp_learns_frappe_x1(real_file, tmp_path) -> None:
    real_file("frappe_x1/train.csv")
    cfg = compose_train_config([
        "experiment=finalmlp_frappe_x1", "trainer.max_epochs=4", "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path}", "~logger",
    ])
    metrics = train(cfg, tmp_path)
    assert metrics["dataset"] == "frappe_x1" and metrics["synthetic_data"] is False
    assert metrics["test"]["auc"] >= 0.97, metrics["test"]
    assert metrics["test"]["logloss"] < 0.30, metrics["test"]
    assert metrics["val"]["gauc"] > 0.95, metrics["val"]
