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


# Each model's non-default variants run the same contract: (variant id, model name, config overrides).
VARIANTS = [(name, name, ()) for name in CTR_MODELS] + [
    ("dcnv2-low_rank_mixture", "dcnv2", ("model.use_low_rank_mixture=true",)),
    ("dcnv2-stacked", "dcnv2", ("model.model_structure=stacked",)),
    ("dcnv2-stacked_parallel-mixture", "dcnv2", ("model.model_structure=stacked_parallel", "model.use_low_rank_mixture=true")),
    ("dcnv2-crossnet_only", "dcnv2", ("model.model_structure=crossnet_only",)),
    ("autoint-use_wide", "autoint", ("model.use_wide=true",)),
    ("autoint-plain", "autoint", ("model.dnn_hidden_units=[]",)),
    ("finalmlp-no_feature_selection", "finalmlp", ("model.use_fs=false",)),
    ("finalmlp-learned_gate_context", "finalmlp", ("model.fs1_context=[]", "model.fs2_context=[]")),
    ("dare-coupled", "dare", ("model.coupled=true",)),
    ("dare-no_recency", "dare", ("model.recency_dim=0",)),
    ("din-softmax", "din", ("model.attention_softmax=true",)),
    ("din-short_history", "din", ("model.max_history=5",)),
]
# Trainable parameters that one step on the data loss legitimately leaves in place, by variant, with why.
# Every other trainable parameter must get a gradient from the data loss and move.
_DEAD_GATE = ("the learned context starts at zero and the gate MLP's biases at zero (FuxiCTR's initialisation), so its "
              "first layer outputs exactly 0, where ReLU's gradient is 0: only the gate's output bias learns")
EXPECTED_STILL: dict[str, dict[str, str]] = {
    "finalmlp-learned_gate_context": {
        f"{gate}.{param}": _DEAD_GATE for gate in ("gate1", "gate2")
        for param in ("context_bias", "gate.0.0.weight", "gate.0.0.bias", "gate.0.2.weight")
    },
}


def test_every_model_has_its_default_variant() -> None:
    assert sorted(v for v, _, o in VARIANTS if not o) == CTR_MODELS
    assert all(model in CTR_MODELS for _, model, _ in VARIANTS)


@pytest.mark.parametrize(("variant", "name", "model_overrides"), VARIANTS, ids=[v for v, _, _ in VARIANTS])
def test_model_contract(variant: str, name: str, model_overrides: tuple[str, ...], small_synthetic, retrain_architecture,
                        tmp_path) -> None:
    overrides, datamodule = small_synthetic
    cfg = compose_train_config([f"model={name}", *overrides, *model_overrides])
    # A search-then-retrain model is checked as retrained (from an architecture file), which is what is
    # trained, exported and served; its search space is covered by tests/tasks/test_search.py.
    retrain = retrain_architecture(cfg.model, datamodule.schema, datamodule.row_counts(), tmp_path / "architecture.json")
    cfg = compose_train_config([f"model={name}", *overrides, *model_overrides, *retrain])
    model = build_model(cfg.model, datamodule.schema)
    assert not getattr(model, "searching", False)
    assert isinstance(model, torch.nn.Module)
    batch = next(iter(datamodule.train_dataloader()))

    logits = model(batch)
    assert logits.shape == (len(batch),) and logits.dtype == torch.float32

    # The data loss reaches every trainable parameter (or the ones named in EXPECTED_STILL, and no more),
    # and one optimiser step with the regulariser added moves each of them; the loss is finite.
    task = CTRTask(model, embedding_l2=0.01, net_l2=1e-5)
    optimizer = task.configure_optimizers()["optimizer"]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    data_loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    data_loss.backward()
    no_gradient = sorted(n for n, p in trainable.items() if p.grad is None or not bool((p.grad != 0).any()))
    expected = sorted(EXPECTED_STILL.get(variant, {}))
    assert no_gradient == expected, f"{variant}: parameters without a gradient from the data loss: {no_gradient}"
    regularization = task.regularization(batch)
    assert torch.isfinite(data_loss + regularization)
    regularization.backward()
    optimizer.step()
    still = sorted(n for n, p in trainable.items() if torch.equal(before[n], p.detach()) and n not in expected)
    assert not still, f"{variant}: {len(still)} of {len(trainable)} trainable parameter tensors did not move: {still}"

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
