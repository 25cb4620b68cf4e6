"""The shared embedding layer: fused single-gather lookup, shared tables, per-field widths, pooling,
named table sets and the L2 penalty on looked-up rows."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from recsys.batch import Batch
from recsys.data import frame_to_batch
from recsys.embedding import FeatureEmbedding
from recsys.features import FeaturePipeline


@pytest.fixture()
def fitted():
    raw = pl.DataFrame({
        "label": [1, 0, 1, 0],
        "user": ["a", "b", "a", "c"],
        "item": ["x", "y", "z", "x"],
        "hist": ["x^y", "", "z", "y^z^x"],
        "price": [1.0, 2.0, 3.0, 4.0],
    })
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "user", "kind": "categorical"},
        {"name": "item", "kind": "categorical"},
        {"name": "price", "kind": "numeric", "norm": "standard"},
        {"name": "hist", "kind": "sequence", "max_len": 3, "share_vocab_with": "item"},
    ]).fit(raw)
    return pipe.schema, frame_to_batch(pipe.transform(raw).collect(), pipe.schema)


def test_forward_shape_and_shared_table_rows(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, 4)
    out = emb(batch)
    assert out.shape == (4, 4, 4)  # user, item, price, hist
    # The history shares the item table: row 1's history is [x] padded... compare with item lookups.
    item_col = [f.name for f in schema.sparse].index("item")
    weight = emb.weights["default__4"]
    item_rows = {int(i): weight[int(i) + emb.default__4__sparse_offsets[item_col]] for i in batch.sparse[:, item_col]}
    seq_ids = batch.seq[2, 0]
    (last,) = [int(i) for i in seq_ids if i != 0]
    assert torch.equal(out[2, 3], item_rows[last])  # mean of a single item == that item's row


def test_sequence_mean_pooling_ignores_padding(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, 3)
    seq_emb, mask = emb.sequences(batch)
    pooled = emb(batch)[:, 3]
    expected = (seq_emb[:, 0] * mask[:, 0, :, None]).sum(1) / mask[:, 0].sum(1, keepdim=True).clamp(min=1)
    assert torch.allclose(pooled, expected)
    assert torch.equal(pooled[1], torch.zeros(3))  # the empty history pools to zero


def test_sequences_by_position_picks_and_reorders_fields_on_the_ids() -> None:
    raw = pl.DataFrame({"label": [1, 0], "item": ["x", "y"], "cat": ["c1", "c2"],
                        "hist": ["x^y", "y"], "hist_cat": ["c1^c2", "c2"]})
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "item", "kind": "categorical"},
        {"name": "cat", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 3, "share_vocab_with": "item"},
        {"name": "hist_cat", "kind": "sequence", "max_len": 3, "share_vocab_with": "cat"},
    ]).fit(raw)
    batch = frame_to_batch(pipe.transform(raw).collect(), pipe.schema)
    emb = FeatureEmbedding(pipe.schema, 4)
    by_field, mask = emb.sequences(batch)  # [B, S, L, D]
    swapped = torch.tensor([1, 0])
    by_position, position_mask = emb.sequences(batch, fields=swapped, by_position=True)  # [B, L, S, D]
    assert by_position.shape == (2, 3, 2, 4) and position_mask.shape == (2, 3, 2)
    assert torch.equal(by_position, by_field[:, [1, 0]].permute(0, 2, 1, 3))
    assert torch.equal(position_mask, mask[:, [1, 0]].transpose(1, 2))
    assert position_mask[1].tolist() == [[0, 0], [0, 0], [1, 1]]  # left-padded: one behaviour, newest last


def test_per_field_widths_flat_follows_schema_order(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, {"user": 2, "item": 5, "*": 3})
    flat = emb.flat(batch)
    assert flat.shape == (4, 2 + 5 + 3 + 3) and emb.output_dim() == 13
    same = FeatureEmbedding(schema, 3)
    with pytest.raises(ValueError, match="several widths"):
        emb(batch)
    assert same.flat(batch).shape == (4, 12)
    # The user slice of flat() is the user row of the width-2 table.
    user_id = batch.sparse[0, 0]
    assert torch.equal(flat[0, :2], emb.weights["default__2"][user_id + emb.default__2__sparse_offsets[0]])


def test_named_table_sets_and_field_subsets(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, tables={"default": 8, "linear": 1})
    assert emb(batch).shape == (4, 4, 8) and emb(batch, "linear").shape == (4, 4, 1)
    ctx = FeatureEmbedding(schema, 8, fields=["user"])
    assert ctx.flat(batch).shape == (4, 8)
    with pytest.raises(ValueError, match="unknown feature fields"):
        FeatureEmbedding(schema, 8, fields=["nope"])


def test_padding_rows_start_at_zero_and_one_gather_for_all_sparse_fields(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, 4, init_std=1.0)
    weight = emb.weights["default__4"]
    for offset in emb.default__4__sparse_offsets.tolist():
        assert torch.equal(weight[offset], torch.zeros(4))
    assert weight.shape[0] == sum(schema.table_sizes().values())  # hist shares item's rows


def test_l2_penalty_counts_each_looked_up_row_once(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, 2, init_std=1.0)
    penalty = emb.l2_penalty(batch)
    weight = emb.weights["default__2"]
    offsets = emb.default__2__sparse_offsets
    rows = set((batch.sparse + offsets).flatten().tolist()) | set((batch.seq[:, 0] + emb.default__2__seq_offsets[0]).flatten().tolist())
    expected = 0.5 * (sum(weight[r].pow(2).sum() for r in rows) + emb.weights["default__2__dense"].pow(2).sum())
    assert torch.allclose(penalty, expected)
    table = emb.l2_penalty(batch, scope="table")
    assert torch.allclose(table, 0.5 * (weight.pow(2).sum() + emb.weights["default__2__dense"].pow(2).sum()))
    penalty.backward()
    untouched = sorted(set(range(weight.shape[0])) - rows)
    assert torch.count_nonzero(weight.grad[untouched]) == 0


def test_batch_take_gathers_every_group(fitted) -> None:
    _, batch = fitted
    part = batch.take(torch.tensor([3, 1]))
    assert isinstance(part, Batch) and len(part) == 2
    assert torch.equal(part.seq[0], batch.seq[3]) and torch.equal(part.label, batch.label[[3, 1]])


def test_mini_batch_aware_l2_weights_each_looked_up_row_by_its_inverse_count(fitted) -> None:
    schema, batch = fitted
    emb = FeatureEmbedding(schema, 4)
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    with pytest.raises(RuntimeError, match="set_row_counts"):
        emb.l2_penalty(batch, "mba")
    counts = {t: torch.full((n,), 4.0) for t, n in schema.table_sizes().items()}
    emb.set_row_counts(counts)
    # Every row counted 4 times: the penalty is a quarter of the unweighted batch-rows penalty
    # (dense field vectors are not rows and keep their weight).
    dense = 0.5 * sum(p.pow(2).sum() for k, p in emb.weights.items() if k.endswith("__dense"))
    plain = emb.l2_penalty(batch, "batch_rows") - dense
    assert torch.allclose(emb.l2_penalty(batch, "mba") - dense, plain / 4, rtol=1e-5)
    assert plain > 0


def test_padding_rows_get_no_gradient_also_in_copies(fitted) -> None:
    """Whatever reaches a padding row's gradient (here: summing unmasked sequence lookups) is zeroed, in the
    layer as built and in its deep copy and unpickled copy (which hold new Parameters)."""
    import copy
    import pickle

    schema, batch = fitted
    built = FeatureEmbedding(schema, 3, tables={"default": 3, "linear": 1}, init_std=1.0)
    assert bool((batch.seq == 0).any())
    for emb in (built, copy.deepcopy(built), pickle.loads(pickle.dumps(built))):
        seq, _ = emb.sequences(batch)
        (seq.sum() + emb(batch, "linear").sum()).backward()
        for key, rows in emb.table_rows.items():
            grad = emb.weights[key].grad
            pads = [first for first, _ in rows.values()]
            assert torch.count_nonzero(grad[pads]) == 0, key
            assert torch.count_nonzero(grad) > 0
