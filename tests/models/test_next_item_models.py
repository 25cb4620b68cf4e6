"""Next-item data, models and losses, each against a plain reading of its definition."""

from __future__ import annotations

import collections

import pytest
import torch

from recsys.batch import Batch
from recsys.config import build_model, compose_train_config
from recsys.sequence import recent_mean


def _train_histories(dm) -> list[list[int]]:  # noqa: ANN001
    """The training histories as id lists, read from the transformed Parquet (not the module's windows)."""
    import polars as pl

    column = pl.read_parquet(dm.prepared.split_path("train"))["history"].to_list()
    return [[i for i in row if i != 0] for row in column]


def test_training_windows_predict_every_next_item_of_the_last_window(small_next_item) -> None:
    _, dm = small_next_item
    train = dm.load("train")
    inputs, target = train.seq[:, 0], train.target
    assert inputs.shape == target.shape == (len(train), dm.window)
    for row, history in enumerate(_train_histories(dm)):
        recent = history[-dm.window :]
        expected_inputs = [0] * (dm.window - len(recent) + 1) + recent[:-1]
        expected_target = [0] * (dm.window - len(recent) + 1) + recent[1:]
        assert inputs[row].tolist() == expected_inputs and target[row].tolist() == expected_target
    assert int((target != 0).sum()) == sum(min(len(h), dm.window) - 1 for h in _train_histories(dm))


def test_transitions_count_each_item_and_the_one_after_it(small_next_item) -> None:
    _, dm = small_next_item
    counts = collections.Counter()
    for history in _train_histories(dm):
        recent = history[-dm.window :]
        counts.update(zip(recent[:-1], recent[1:]))
    csr = dm.transitions()
    got = {}
    for row in range(csr.size):
        for k in range(int(csr.crow[row]), int(csr.crow[row + 1])):
            got[(row, int(csr.col[k]))] = float(csr.values[k])
    assert got == {pair: float(n) for pair, n in counts.items()}


def test_transition_distillation_equals_the_dense_formula() -> None:
    from recsys.data.modules import CSRMatrix
    from recsys.tasks.next_item import transition_distillation

    torch.manual_seed(0)
    n, tau = 9, 0.1
    dense = torch.zeros(n, n)
    dense[2, 3], dense[2, 5], dense[4, 2], dense[4, 4], dense[7, 8] = 3.0, 1.0, 2.0, 2.0, 5.0
    rows, cols = dense.nonzero(as_tuple=True)
    crow = torch.zeros(n + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    csr = CSRMatrix(crow, cols, dense[rows, cols], n)
    heads, weights = torch.tensor([2, 4, 7]), torch.tensor([1.0, 3.0, 2.0])
    similarity = torch.randn(3, n, requires_grad=True)
    got = transition_distillation(similarity[:, 2:] / tau, heads, csr, tau, weights)
    # Written out: teacher softmax((c / max c) / tau) over items 2.. (zeros included), student softmax
    # (similarity / tau) over the same items, cross-entropy of the student under the teacher, weighted mean.
    c = dense[heads][:, 2:]
    q = torch.softmax(c / c.max(dim=1, keepdim=True).values / tau, dim=1)
    log_p = torch.log_softmax(similarity[:, 2:] / tau, dim=1)
    expected = ((-(q * log_p).sum(1)) * weights).sum() / weights.sum()
    torch.testing.assert_close(got, expected)


def test_recent_mean_is_the_mean_of_the_last_window_items() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 7, 3)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1], [0] * 7]).float()
    got = recent_mean(x, mask, window=3)
    for b in range(4):
        for t in range(7):
            items = [x[b, s] for s in range(max(0, t - 2), t + 1) if mask[b, s]]
            expected = torch.stack(items).mean(0) if items else torch.zeros(3)
            torch.testing.assert_close(got[b, t], expected)


@pytest.mark.parametrize("name", ["sasrec", "mqsa_ted"])
def test_attention_is_causal_and_padding_is_ignored(name: str, small_next_item) -> None:
    _, dm = small_next_item
    model = build_model(compose_train_config([f"model={name}", "model.max_len=20"]).model, dm.schema).eval()
    batch = dm.load("valid").take(slice(0, 32))
    seq = batch.seq[..., -20:]
    full = seq[:, 0] != 0
    rows = full[:, -6:].all(1)  # users with at least 6 items in the window
    changed = seq.clone()
    changed[:, 0, -1] = torch.where(changed[:, 0, -1] != 0, 3, 0)  # another newest item
    with torch.no_grad():
        before = model.sequence_vectors(Batch(batch.sparse, batch.dense, seq))
        after = model.sequence_vectors(Batch(batch.sparse, batch.dense, changed))
        # A position never sees the items after it, so only the newest position can move.
        torch.testing.assert_close(before[rows, :-1], after[rows, :-1])
        assert not torch.allclose(before[rows, -1], after[rows, -1])
        # More left padding (a longer input) changes nothing.
        padded = torch.nn.functional.pad(seq, (30, 0))
        torch.testing.assert_close(model(Batch(batch.sparse, batch.dense, padded)), before[:, -1])


def test_mqsa_ted_mixes_its_towers_and_its_long_query_is_the_recent_mean(small_next_item) -> None:
    _, dm = small_next_item
    cfg = compose_train_config(["model=mqsa_ted", "model.alpha=0.3"])
    model = build_model(cfg.model, dm.schema).eval()
    batch = dm.load("valid").take(slice(0, 16))
    with torch.no_grad():
        short, long = model.towers(batch)
        torch.testing.assert_close(model.sequence_vectors(batch), 0.3 * short + 0.7 * long)
        assert not torch.allclose(short, long, atol=1e-3)  # two towers with their own weights
        # With a window of one item the long query is the input itself: the towers then differ only by
        # their weights, so copying the short tower's weights into the long one makes them equal.
        model.long_window = 1
        model.long_blocks.load_state_dict(model.short_blocks.state_dict())
        model.long_norm.load_state_dict(model.short_norm.state_dict())
        short, long = model.towers(batch)
        torch.testing.assert_close(short, long)


def test_recommendation_loss_is_the_cross_entropy_at_every_predicted_position(small_next_item) -> None:
    from recsys.tasks.next_item import NextItemTask

    _, dm = small_next_item
    model = build_model(compose_train_config(["model=sasrec", "model.dropout=0.0"]).model, dm.schema)
    task = NextItemTask(model)
    batch = next(iter(dm.train_dataloader()))
    vectors, items = model.sequence_vectors(batch), model.item_vectors()
    losses = []
    for b in range(len(batch)):
        for t in range(batch.target.shape[1]):
            target = int(batch.target[b, t])
            if target:
                logits = vectors[b, t] @ items[2:].t()  # padding and out-of-vocabulary are not candidates
                losses.append(-torch.log_softmax(logits, 0)[target - 2])
    torch.testing.assert_close(task.recommendation_loss(batch), torch.stack(losses).mean())
