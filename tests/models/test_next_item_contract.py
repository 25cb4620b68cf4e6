"""The contract every next-item model keeps: built from its config, one CPU training step through the
next-item task (distillation included) moving every parameter, a user vector per row with no cross-row
dependence, item vectors for every id, and a checkpoint round trip. Parametrised over the registered
models that have an item matrix, so a next-item model added to conf/model/ is covered by itself. (Export
and ONNX parity: tests/serving/test_export.py.)"""

from __future__ import annotations

import pytest
import pytorch_lightning as L
import torch

from recsys.config import build_model, compose_train_config
from recsys.models import REGISTRY, model_class
from recsys.tasks.next_item import NextItemTask

NEXT_ITEM_MODELS = sorted(m for m in REGISTRY if hasattr(model_class(m), "item_vectors"))


def test_the_zoo_has_its_next_item_models() -> None:
    assert {"sasrec", "mqsa_ted"} <= set(NEXT_ITEM_MODELS)


@pytest.mark.parametrize("name", NEXT_ITEM_MODELS)
def test_next_item_model_contract(name: str, small_next_item, tmp_path) -> None:
    overrides, datamodule = small_next_item
    cfg = compose_train_config([f"model={name}", *overrides])
    model = build_model(cfg.model, datamodule.schema)
    batch = next(iter(datamodule.train_dataloader()))
    items = model.item_vectors()
    assert items.shape[0] == datamodule.num_items and model(batch).shape == (len(batch), items.shape[1])
    assert model.sequence_vectors(batch).shape == (*batch.target.shape, items.shape[1])

    # One step of the task's loss (recommendation and distillation) moves every parameter tensor.
    task = NextItemTask(model, distill_weight=0.1)
    task.transitions = datamodule.transitions()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = task.recommendation_loss(batch) + 0.1 * task.distillation_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    still = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not still, f"parameters that did not move: {still}"

    # No cross-row dependence at inference: a user's vector alone equals the one inside the batch.
    model.eval()
    valid = datamodule.load("valid").take(slice(0, 64))
    with torch.no_grad():
        assert torch.allclose(model(valid)[5:6], model(valid.take(slice(5, 6))), atol=1e-5)

    # Checkpoint round trip through Lightning into a freshly built model.
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    model.train()
    trainer.fit(NextItemTask(model, distill_weight=0.1), datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = NextItemTask.load_from_checkpoint(tmp_path / "model.ckpt", model=build_model(cfg.model, datamodule.schema)).model
    model.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(model(valid), restored(valid)) and torch.equal(model.item_vectors(), restored.item_vectors())
