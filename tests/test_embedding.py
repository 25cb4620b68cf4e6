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


# ------------------------------------------------------------------ options for search-then-retrain models
@pytest.fixture()
def wide():
    """Three categorical fields, two of them wide enough that their cross must hash at 100 rows."""
    raw = pl.DataFrame({
        "label": [i % 2 for i in range(60)],
        "a": [f"a{i % 30}" for i in range(60)],
        "b": [f"b{i % 20}" for i in range(60)],
        "c": [f"c{i % 3}" for i in range(60)],
    })
    pipe = FeaturePipeline([{"name": "label", "kind": "label"}] + [{"name": n, "kind": "categorical"} for n in "abc"]).fit(raw)
    return pipe.schema, frame_to_batch(pipe.transform(raw).collect(), pipe.schema)


def test_cross_sets_give_each_pair_its_own_rows_exact_or_hashed(wide) -> None:
    from recsys.kernels.hashing import stable_hash

    schema, batch = wide
    size = {f.name: f.vocab_size for f in schema.sparse}  # a 32, b 22, c 5
    emb = FeatureEmbedding(schema, tables={"default": 4, "cross": 3}, crosses={"cross": [("a", "b"), ("b", "c")]},
                           cross_buckets=100, init_std=1.0)
    out = emb(batch, "cross")
    assert out.shape == (len(batch), 2, 3)
    # a*b has 32 * 22 combinations > 100: hashed into 100 rows; b*c has 22 * 5 = 110 > 100 too, so try c*a
    # below for an exact pair. Row ranges: a*b rows [0, 100), b*c rows [100, 200).
    assert emb.table_rows["cross__3"] == {"a*b": (0, 100), "b*c": (100, 100)}
    weight = emb.weights["cross__3"]
    a, b, c = (batch.sparse[:, i] for i in range(3))
    assert torch.equal(out[:, 0], weight[stable_hash(a * size["b"] + b) % 100])
    assert torch.equal(out[:, 1], weight[100 + stable_hash(b * size["c"] + c) % 100])
    exact = FeatureEmbedding(schema, tables={"default": 4, "cross": 3}, crosses={"cross": [("c", "a"), ("a", "b")]},
                             cross_buckets=200, init_std=1.0)
    assert exact.table_rows["cross__3"] == {"c*a": (0, 5 * 32), "a*b": (160, 200)}
    assert torch.equal(exact(batch, "cross")[:, 0], exact.weights["cross__3"][c * size["a"] + a])
    # The L2 on looked-up rows covers the cross rows the batch used, each once.
    rows = torch.unique(torch.cat([c * size["a"] + a, 160 + stable_hash(a * size["b"] + b) % 200]))
    cross_only = FeatureEmbedding(schema, tables={"cross": 3}, crosses={"cross": [("c", "a"), ("a", "b")]},
                                  cross_buckets=200, init_std=1.0)
    with torch.no_grad():
        cross_only.weights["cross__3"].copy_(exact.weights["cross__3"])
    assert torch.allclose(cross_only.l2_penalty(batch), 0.5 * exact.weights["cross__3"][rows].pow(2).sum())
    with pytest.raises(ValueError, match="not sparse fields"):
        FeatureEmbedding(schema, tables={"cross": 3}, crosses={"cross": [("a", "nope")]})


def test_a_minimum_count_gives_rows_to_the_values_that_reach_it_and_one_shared_row_per_pair(wide) -> None:
    from collections import Counter

    from recsys.kernels.hashing import stable_hash

    schema, batch = wide
    size = {f.name: f.vocab_size for f in schema.sparse}  # a 32, b 22, c 5
    make = lambda: FeatureEmbedding(schema, tables={"cross": 3}, crosses={"cross": [("c", "a"), ("a", "b")]},  # noqa: E731
                                    cross_buckets=200, cross_min_count=2, init_std=1.0)
    emb = make()
    assert emb.table_rows["cross__3"] == {"c*a": (0, 1), "a*b": (1, 1)}  # one row per pair until counted
    with pytest.raises(RuntimeError, match="call count_crosses"):
        emb(batch, "cross")
    train = batch.take(slice(0, 45))  # c*a: a's values 0-14 occur twice here, 15-29 once
    summary = emb.count_crosses([train.take(slice(0, 20)), train.take(slice(20, 45))])
    # Expected, counted here: c*a is exact (5 x 32 values), a*b hashed into 200 buckets, counted per bucket.
    a, b, c = (batch.sparse[:, i] for i in range(3))
    values = {"c*a": (c * size["a"] + a).tolist(), "a*b": (stable_hash(a * size["b"] + b) % 200).tolist()}
    seen = {pair: Counter(v[:45]) for pair, v in values.items()}
    kept = {pair: sorted(v for v, n in counts.items() if n >= 2) for pair, counts in seen.items()}
    assert 0 < len(kept["c*a"]) < len(seen["c*a"]) and 0 < len(kept["a*b"]) < len(seen["a*b"])  # both kinds occur
    assert summary == {"cross__3": {"seen": sum(map(len, seen.values())), "kept": sum(map(len, kept.values()))}}
    n_ca, n_ab = len(kept["c*a"]), len(kept["a*b"])
    # The table holds the kept values and one rare row per pair, nothing else.
    assert emb.table_rows["cross__3"] == {"c*a": (0, n_ca + 1), "a*b": (n_ca + 1, n_ab + 1)}
    assert emb.weights["cross__3"].shape == (n_ca + n_ab + 2, 3)
    weight = emb.weights["cross__3"]
    out = emb(batch, "cross")
    for column, (pair, first) in enumerate((("c*a", 0), ("a*b", n_ca + 1))):
        for i, value in enumerate(values[pair]):  # every row of the batch, the 15 after the training ones too
            own = kept[pair].index(value) if value in kept[pair] else len(kept[pair])
            assert torch.equal(out[i, column], weight[first + own]), (pair, i, value)
    # The counted vocabulary travels with the state: a fresh layer takes the table's size and the same rows.
    loaded = make()
    loaded.load_state_dict(emb.state_dict())
    assert torch.equal(loaded(batch, "cross"), out) and loaded.table_rows == emb.table_rows
    # A state without the index cannot pass for counted: its table does not fit the uncounted layer.
    state = {k: v for k, v in emb.state_dict().items() if not k.endswith("__cross_index")}
    with pytest.raises(RuntimeError, match="size mismatch"):
        make().load_state_dict(state, strict=False)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="cross_min_count must be an integer >= 1"):
            FeatureEmbedding(schema, tables={"cross": 3}, crosses={"cross": [("c", "a")]}, cross_min_count=bad)


def test_a_counted_index_narrows_to_int16_for_export_while_the_table_fits_and_stays_int32_beyond() -> None:
    # 200 x 200 = 40,000 values of an exact pair, each seen twice: a minimum count of 2 keeps them all, so rows
    # run past int16's 32,767; a count of 3 keeps none (one rare row).
    n = 200
    raw = pl.DataFrame({"label": [0, 1] * (n * n), "a": [f"a{i // n % n}" for i in range(2 * n * n)],
                        "b": [f"b{i % n}" for i in range(2 * n * n)]})
    pipe = FeaturePipeline([{"name": "label", "kind": "label"}, {"name": "a", "kind": "categorical"},
                            {"name": "b", "kind": "categorical"}]).fit(raw)
    batch = frame_to_batch(pipe.transform(raw).collect(), pipe.schema)
    make = lambda count: FeatureEmbedding(pipe.schema, tables={"cross": 2}, crosses={"cross": [("a", "b")]},  # noqa: E731
                                          cross_buckets=1 << 20, cross_min_count=count, init_std=1.0)
    wide, narrow = make(2), make(3)
    assert wide.count_crosses([batch]) == {"cross__2": {"seen": n * n, "kept": n * n}}
    narrow.count_crosses([batch])
    # Counted, both train with int32 indices (DDP broadcasts buffers; neither gloo nor NCCL has int16).
    assert wide.cross__2__cross_index.dtype == narrow.cross__2__cross_index.dtype == torch.int32
    before = {"wide": wide(batch, "cross"), "narrow": narrow(batch, "cross")}
    wide.narrow_cross_indices()
    narrow.narrow_cross_indices()
    assert wide.cross__2__cross_index.dtype == torch.int32 and narrow.cross__2__cross_index.dtype == torch.int16
    # The same lookups after narrowing, and every kept value on its own row, the ones past 32,767 included
    # (an int16 index would wrap them).
    assert torch.equal(wide(batch, "cross"), before["wide"]) and torch.equal(narrow(batch, "cross"), before["narrow"])
    looked_up = before["wide"][:, 0]
    rows = {tuple(r) for r in wide.weights["cross__2"].detach()[: n * n].tolist()}
    assert len(rows) == n * n and {tuple(r) for r in looked_up.detach().tolist()} == rows


def test_packed_kept_dims_store_only_the_kept_entries_and_look_up_as_a_masked_table(wide) -> None:
    schema, batch = wide
    emb = FeatureEmbedding(schema, tables={"default": 4, "linear": 1}, init_std=1.0)
    sizes = schema.table_sizes()  # a 32, b 22, c 5
    kept = {
        "a": [(0, 7, [0, 3]), (7, 20, [1]), (20, 32, [])],
        "b": [(0, 22, [0, 1, 2, 3])],
        "c": [(0, 2, [2]), (2, 5, [3, 0])],
    }
    emb.keep_dims("default", kept)
    stored = 7 * 2 + 13 * 1 + 22 * 4 + 2 * 1 + 3 * 2
    assert emb.weights["default__4"].shape == (stored,) and emb.stored_entries("default") == stored
    assert emb.stored_entries("linear") == sum(sizes.values())  # other sets stay whole
    # The lookup is the table a dense layer would hold with the dropped entries at zero: rebuild that table
    # from the packed values in plain Python (row-major per range, ranges in table order) and compare.
    dense = torch.zeros(sum(sizes.values()), 4)
    values = emb.weights["default__4"].detach()
    cursor = 0
    ranges = sorted((emb.table_rows["default__4"][t][0] + s, emb.table_rows["default__4"][t][0] + e, sorted(d))
                    for t, r in kept.items() for s, e, d in r)
    for start, stop, dims in ranges:
        for row in range(start, stop):
            for d in dims:
                dense[row, d] = values[cursor]
                cursor += 1
    assert cursor == stored
    out = emb(batch)
    ids = batch.sparse + emb.default__4__sparse_offsets
    assert torch.equal(out, dense[ids])
    assert torch.equal(dense[[o for o, _ in emb.table_rows["default__4"].values()]], torch.zeros(3, 4))  # padding rows
    # Gradients reach exactly the stored entries of the rows looked up.
    out.sum().backward()
    assert torch.count_nonzero(emb.weights["default__4"].grad) == sum(
        len(d) for r in torch.unique(ids).tolist() for s, e, d in ranges if s <= r < e)
    with pytest.raises(ValueError, match="does not continue from row 7"):
        FeatureEmbedding(schema, 4).keep_dims("default", {**kept, "a": [(0, 7, [0]), (8, 32, [1])]})
    with pytest.raises(ValueError, match="tables \\['c'\\] are missing"):
        FeatureEmbedding(schema, 4).keep_dims("default", {k: v for k, v in kept.items() if k != "c"})
    with pytest.raises(ValueError, match="dims \\[4\\] must be"):
        FeatureEmbedding(schema, 4).keep_dims("default", {**kept, "b": [(0, 22, [4])]})


def test_dimension_gates_scale_each_row_by_its_blocks_weights(wide) -> None:
    schema, batch = wide
    emb = FeatureEmbedding(schema, 3, init_std=1.0)
    rows = emb.group_rows("default__3")
    row_block = torch.arange(rows) % 2
    gates = emb.gate_dims("default", row_block, 2)
    assert torch.equal(gates.detach(), torch.ones(2, 3))
    with torch.no_grad():
        gates.copy_(torch.tensor([[1.0, 0.5, 0.0], [0.25, 1.0, 2.0]]))
    ids = batch.sparse + emb.default__3__sparse_offsets
    expected = emb.weights["default__3"][ids] * gates[row_block[ids]]
    assert torch.equal(emb(batch), expected)
    emb(batch).sum().backward()
    assert gates.grad is not None and torch.count_nonzero(gates.grad) > 0
    with pytest.raises(ValueError, match="already gated or packed"):
        emb.keep_dims("default", {})
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


def test_a_packed_tables_padding_rows_stay_zero_after_steps(wide) -> None:
    """A packed (DNIS-retrained) table stores entries, not rows: the padding hook must zero the stored
    entries of each table's padding row, or a lookup of padding (id 0) drifts away from zero under Adam."""
    schema, batch = wide
    emb = FeatureEmbedding(schema, tables={"default": 4}, init_std=1.0)
    emb.keep_dims("default", {"a": [(0, 7, [0, 3]), (7, 32, [1])], "b": [(0, 22, [0, 1, 2, 3])], "c": [(0, 5, [2, 0])]})
    padded = batch.take(torch.arange(len(batch)))
    padded.sparse[::2] = 0  # every other row looks up every table's padding row
    optimizer = torch.optim.Adam(emb.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        emb(padded).sum().backward()  # a gradient of 1 on every looked-up entry, padding included
        optimizer.step()
    out = emb(padded).detach()
    assert torch.count_nonzero(out[::2]) == 0
    assert torch.count_nonzero(out[1::2]) > 0
