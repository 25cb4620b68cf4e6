"""Behaviour-sequence models: what each one's definition promises beyond the shared contract."""

from __future__ import annotations

import pytest
import torch

from recsys.batch import Batch
from recsys.config import compose_train_config
from recsys.models.din import DIN
from recsys.sequence import BehaviourFields
from recsys.config import build_model


def _model(name: str, datamodule, **params):
    cfg = compose_train_config([f"model={name}", *[f"model.{k}={v}" for k, v in params.items()]])
    model = build_model(cfg.model, datamodule.schema)
    with torch.no_grad():  # trained-looking embeddings, so hashing and attention see distinct vectors
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() == 2 else None
    return model.eval()


def _batch(datamodule, n: int = 64) -> Batch:
    return datamodule.load("valid").take(slice(0, n))


def test_histories_are_paired_with_their_targets_from_the_schema(small_synthetic) -> None:
    _, dm = small_synthetic
    fields = BehaviourFields.from_schema(dm.schema)
    assert fields.targets == ("item",) and fields.histories == ("hist_item",) and fields.side == ()


def test_sdim_behaviour_sums_score_the_same_as_the_full_computation(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("sdim", dm, num_hashes=16, hash_bits=2, short_length=4)
    batch = _batch(dm)
    with torch.no_grad():
        full = model(batch)
        sums = model.behaviour_sums(batch)
        assert sums.shape == (64, 16, 4, model.behaviours.value_dim)
        fast = model.score_with_behaviour_sums(batch, sums)
        # One user's sums serve many candidates: score row 0's history against every row's target.
        one_user = Batch(batch.sparse, batch.dense, batch.seq[:1].expand_as(batch.seq))
        shared = model.score_with_behaviour_sums(one_user, sums[:1].expand(64, -1, -1, -1))
        assert torch.allclose(shared, model(one_user), atol=1e-5)
    assert torch.allclose(fast, full, atol=1e-5)
    assert full.std() > 1e-3  # scores vary, so equality is not between constants


def test_sdim_long_interest_depends_on_the_whole_history(small_synthetic) -> None:
    """Behaviours older than the short window still move the score (through the hash buckets)."""
    _, dm = small_synthetic
    model = _model("sdim", dm, short_length=2)
    batch = _batch(dm)
    long_rows = (batch.seq[:, 0] != 0).sum(1) > 4
    older = batch.seq.clone()
    older[:, :, :-2] = torch.where(older[:, :, :-2] != 0, 2, 0)  # replace all but the last 2 behaviours
    with torch.no_grad():
        changed = model(batch) != model(Batch(batch.sparse, batch.dense, older))
    assert changed[long_rows].float().mean() > 0.5


def _history_padding_row(model: torch.nn.Module) -> int:
    """The fused row a history's padding id looks up: row 0 of the item table (hist_item shares it), which
    sits after the user table's rows, not at row 0 of the fused parameter."""
    embedding = model.behaviours.embedding
    (hist,) = [f for f in embedding.groups["default"][0].seq_fields if f == "hist_item"]
    first, _ = embedding.table_rows["default__16"]["item"]
    assert first > 0  # not the user table's padding row
    return first


def test_din_ignores_padding_and_max_history_truncates(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("din", dm)
    batch = _batch(dm)
    assert bool((batch.seq == 0).any())  # the batch has history padding to ignore
    with torch.no_grad():
        base = model(batch)
        # The padding row the histories read is masked out of the attention: its content cannot matter.
        model.behaviours.embedding.weights["default__16"][_history_padding_row(model)] = 5.0
        assert torch.allclose(model(batch), base, atol=1e-6)
        model.behaviours.embedding.weights["default__16"][_history_padding_row(model)] = 0.0
        model.max_history = 3
        older = batch.seq.clone()
        older[:, :, :-3] = torch.where(older[:, :, :-3] != 0, 2, 0)
        assert torch.equal(model(batch), model(Batch(batch.sparse, batch.dense, older)))


def test_dare_decoupled_tables_and_top_k_search(small_synthetic) -> None:
    _, dm = small_synthetic
    decoupled = _model("dare", dm, attention_dim=8, top_k=3)
    coupled = _model("dare", dm, coupled=True, top_k=3)
    sets = decoupled.behaviours.embedding.field_dims
    assert sets["attention"] == {"item": 8, "hist_item": 8}  # only the target and its history
    assert "attention" not in coupled.behaviours.embedding.field_dims
    assert sum(p.numel() for p in decoupled.parameters()) > sum(p.numel() for p in coupled.parameters())
    batch = _batch(dm)
    with torch.no_grad():
        weights, positions = decoupled.search(batch)
        assert weights.shape == positions.shape == (64, 3)
        lengths = (batch.seq[:, 0] != 0).sum(1)
        # Weights sum to 1 over real behaviours; padding never gets weight.
        assert torch.allclose(weights.sum(1)[lengths > 0], torch.ones(int((lengths > 0).sum())), atol=1e-5)
        picked_ids = batch.seq[:, 0].gather(1, positions)
        assert torch.all(weights[picked_ids == 0] == 0)
        # Behaviours outside the top-k do not change the score: drop them all (make them padding).
        unpicked = torch.ones_like(batch.seq, dtype=torch.bool)
        unpicked.scatter_(2, positions.unsqueeze(1).expand(-1, batch.seq.shape[1], -1), False)
        only_top_k = Batch(batch.sparse, batch.dense, torch.where(unpicked, 0, batch.seq))
        assert torch.allclose(decoupled(only_top_k), decoupled(batch), atol=1e-5)
        assert int((only_top_k.seq != 0).sum()) < int((batch.seq != 0).sum())  # something was dropped


def test_target_attention_equals_the_mlp_on_the_concatenated_input() -> None:
    """The split first layer must compute DIN's unit as written: MLP([q, k, q - k, q * k])."""
    from recsys.sequence import TargetAttention

    torch.manual_seed(0)
    unit = TargetAttention(8, (12, 6), activation="dice").eval()
    for layer in unit.score:  # non-trivial running statistics, so Dice is not an identity map
        if hasattr(layer, "norm"):
            layer.norm.running_mean.normal_()
            layer.norm.running_var.uniform_(0.5, 2.0)
            layer.alpha.data.uniform_(-1, 1)
    query, keys, values = torch.randn(5, 8), torch.randn(5, 7, 8), torch.randn(5, 7, 3)
    mask = (torch.rand(5, 7) > 0.3).float()
    q = query.unsqueeze(1).expand_as(keys)
    scores = unit.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1) * mask
    expected = torch.bmm(scores.unsqueeze(1), values).squeeze(1)
    torch.testing.assert_close(unit(query, keys, values, mask), expected, rtol=1e-5, atol=1e-5)


def test_recency_buckets_are_log2_distances_from_the_newest_behaviour() -> None:
    from recsys.sequence import RecencyEmbedding

    recency = RecencyEmbedding(max_len=16, dim=4)
    # Position 15 is the newest; distances 0 | 1-2 | 3-6 | 7-14 | 15.
    assert recency.buckets.flip(0).tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4]
    assert recency().shape == (16, 4) and recency(torch.tensor([[15, 0]])).shape == (1, 2, 4)


def test_dare_recency_steers_the_search_to_recent_behaviours(small_synthetic) -> None:
    _, dm = small_synthetic
    model = _model("dare", dm, attention_dim=8, top_k=3)
    batch = _batch(dm)
    lengths = (batch.seq[:, 0] != 0).sum(1)
    full = lengths >= 3
    with torch.no_grad():
        # A recency score that dwarfs the semantic one: the search must pick the 3 newest behaviours.
        model.recency_query.fill_(1.0)
        model.recency_attention.table.copy_(-1e3 * torch.arange(model.recency_attention.table.shape[0]).unsqueeze(1))
        _, positions = model.search(batch)
        newest = torch.arange(batch.seq.shape[-1] - 3, batch.seq.shape[-1])
        assert torch.equal(positions[full].sort(1).values, newest.expand(int(full.sum()), 3))
        # Without recency embeddings the same tables rank by content alone, so some row picks older ones.
        plain = _model("dare", dm, attention_dim=8, top_k=3, recency_dim=0)
        _, plain_positions = plain.search(batch)
        assert not torch.equal(plain_positions[full].sort(1).values, newest.expand(int(full.sum()), 3))


def test_sequence_models_name_the_missing_history() -> None:
    from recsys.features.schema import FieldSpec, Schema

    schema = Schema([FieldSpec("user", "categorical", vocab_size=5), FieldSpec("item", "categorical", vocab_size=5)])
    with pytest.raises(ValueError, match="share_vocab_with: item"):
        DIN(schema)


def test_din_trains_with_mini_batch_aware_regularisation(small_synthetic, tmp_path) -> None:
    import pytorch_lightning as L

    from recsys.tasks.ctr import CTRTask

    _, dm = small_synthetic
    model = build_model(compose_train_config(["model=din"]).model, dm.schema)
    task = CTRTask(model, embedding_l2=0.1, embedding_l2_scope="mba")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    inverse = model.behaviours.embedding.default__16__inverse_count
    # Frequent ids weigh less than rare ones; padding keeps weight 1 (it is never looked up as a row).
    assert inverse.min() < 0.1 and inverse.max() == 1.0
    batch = dm.load("train").take(slice(0, 256))
    assert 0 < task.regularization(batch) < CTRTask(model, embedding_l2=0.1).regularization(batch)


@pytest.mark.parametrize("name", ["din", "sdim", "dare"])
def test_padding_rows_stay_zero_and_neutral_after_training_steps(name: str, small_synthetic) -> None:
    """Dice's batch statistics (and SDIM's and DARE's lookups) see every history position, padding
    included; the padding rows of every table of the shared layer must still be exactly zero after
    Adam steps, and padding must not change a score."""
    from recsys.embedding import FeatureEmbedding
    from recsys.tasks.ctr import CTRTask

    _, dm = small_synthetic
    model = build_model(compose_train_config([f"model={name}"]).model, dm.schema)
    task = CTRTask(model, learning_rate=1e-2)
    optimizer = task.configure_optimizers()["optimizer"]
    batches = iter(dm.train_dataloader())
    model.train()
    for _ in range(3):
        batch = next(batches)
        assert bool((batch.seq == 0).any())
        optimizer.zero_grad()
        task.training_step(batch, 0).backward()
        optimizer.step()
    layers = [m for m in model.modules() if isinstance(m, FeatureEmbedding)]
    checked = 0
    for layer in layers:
        for key, rows in layer.table_rows.items():
            weight = layer.weights[key]
            for table, (first, _) in rows.items():
                assert torch.count_nonzero(weight[first]) == 0, f"{name}: padding row of table {table!r} in {key} moved"
                checked += 1
            assert torch.count_nonzero(weight) > weight.shape[0]  # the rest did train
    assert checked >= 2  # several tables, each with its own padding row
    # Padding is neutral in the trained model too: whatever its rows held, the scores would not change.
    model.eval()
    batch = _batch(dm)
    with torch.no_grad():
        before = model(batch)
        for layer in layers:
            for key, rows in layer.table_rows.items():
                for first, _ in rows.values():
                    layer.weights[key][first] = 5.0
        assert torch.allclose(model(batch), before, atol=1e-5)
        assert before.std() > 1e-4
