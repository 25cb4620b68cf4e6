"""The contract every registered model keeps: built from its config, one CPU training step, output
shape, no cross-row dependence at inference, and a checkpoint round trip. Parametrised over the Hydra
model group, so a model added there is covered without touching this file."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
import yaml

import recsys.conf
from recsys.config import compose_train_config
from recsys.models import REGISTRY, model_class
from recsys.tasks.ctr import CTRTask
from recsys.config import build_model

MODEL_CONF = Path(recsys.conf.__file__).parent / "model"
MODELS = sorted(p.stem for p in MODEL_CONF.glob("*.yaml"))
# Next-item models keep their own contract (tests/models/test_next_item_contract.py).
CTR_MODELS = [m for m in MODELS if not hasattr(model_class(m), "item_vectors")]


def test_the_registry_is_the_config_group() -> None:
    assert MODELS == sorted(REGISTRY)
    for name in MODELS:
        target = yaml.safe_load((MODEL_CONF / f"{name}.yaml").read_text())["_target_"]
        assert model_class(name).__module__ + "." + model_class(name).__name__ == target
    with pytest.raises(KeyError, match="unknown model 'nope'; registered models"):
        model_class("nope")


@pytest.mark.parametrize("name", CTR_MODELS)
def test_model_contract(name: str, small_synthetic, retrain_architecture, tmp_path) -> None:
    overrides, datamodule = small_synthetic
    cfg = compose_train_config([f"model={name}", *overrides])
    # A search-then-retrain model is checked as retrained (from an architecture file), which is what is
    # trained, exported and served; its search space is covered by tests/tasks/test_search.py.
    retrain = retrain_architecture(cfg.model, datamodule.schema, datamodule.row_counts(), tmp_path / "architecture.json")
    cfg = compose_train_config([f"model={name}", *overrides, *retrain])
    model = build_model(cfg.model, datamodule.schema)
    assert not getattr(model, "searching", False)
    assert isinstance(model, torch.nn.Module)
    batch = next(iter(datamodule.train_dataloader()))

    logits = model(batch)
    assert logits.shape == (len(batch),) and logits.dtype == torch.float32

    # One training step through the task changes the parameters and gives a finite loss.
    task = CTRTask(model, embedding_l2=0.01, net_l2=1e-5)
    optimizer = task.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label) + task.regularization(batch)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert changed >= len(before) // 2, f"only {changed} of {len(before)} parameter tensors moved"

    # Inference has no cross-row dependence: a row scores the same alone as inside the batch.
    model.eval()
    with torch.no_grad():
        full = model(batch)
        alone = model(batch.take(slice(5, 6)))
    assert torch.allclose(full[5:6], alone, atol=1e-5)

    # Checkpoint round trip through Lightning into a freshly built model.
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    model.train()
    trainer.fit(CTRTask(model), datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = CTRTask.load_from_checkpoint(path, model=build_model(cfg.model, datamodule.schema)).model
    model.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), restored(batch))
