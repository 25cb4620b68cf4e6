"""The weights' Adam: its fused kernel in full precision, the plain one under mixed precision, where
Lightning refuses gradient clipping with an optimiser that unscales its own gradients."""

from __future__ import annotations

import pytest
import pytorch_lightning as L
import torch

from recsys.config import build_model, build_task, compose_train_config


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", False)])
def test_adam_is_fused_in_full_precision_only_and_clipped_training_runs(precision: str, fused: bool, small_synthetic, tmp_path) -> None:
    overrides, dm = small_synthetic
    cfg = compose_train_config(["model=deepfm", *overrides])
    task = build_task(cfg, build_model(cfg.model, dm.schema))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, precision=precision,
                        gradient_clip_val=10.0, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    before = [p.detach().clone() for p in task.model.parameters()]
    trainer.fit(task, datamodule=dm)
    optimizer = trainer.optimizers[0]
    assert bool(optimizer.param_groups[0]["fused"]) is fused
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters(), strict=True))
