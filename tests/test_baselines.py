"""recsys.baselines: the CTR baselines by their definitions on a dataset small enough to compute by hand,
computed from train only, cached per prepared dataset, and the fields they use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.baselines import BASELINES_FILE, dataset_baselines, rate_fields
from recsys.data import prepare_dataset
from recsys.features import FieldSpec, Schema


def _raw(root: Path, flip_test: bool = False) -> dict:
    """Users u0..u3 and items i0..i5. In every split the label is 1 exactly for items i0 and i1 (a third of
    the rows), so the item's training rate ranks every valid and test row correctly; users carry no signal
    (each sees every item)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, reps in (("train", 5), ("valid", 1), ("test", 1)):
        rows = [(u, i, int(i < 2)) for _ in range(reps) for u in range(4) for i in range(6)]
        if split == "test" and flip_test:
            rows = [(u, i, 1 - y) for u, i, y in rows]
        pl.DataFrame({"label": [y for _, _, y in rows], "uid": [f"u{u}" for u, _, _ in rows],
                      "iid": [f"i{i}" for _, i, _ in rows]}).write_csv(root / f"{split}.csv")
    return {"name": "counts", "root": str(root), "files": {s: f"{s}.csv" for s in ("train", "valid", "test")},
            "fields": [{"name": "label", "kind": "label"}, {"name": "uid", "kind": "categorical", "role": "user"},
                       {"name": "iid", "kind": "categorical", "role": "item"}, {"name": "g", "kind": "group", "source": "uid"}]}


def test_constant_and_target_rate_baselines_by_their_definitions(tmp_path) -> None:
    prepared = prepare_dataset(_raw(tmp_path / "raw"), tmp_path / "cache")
    payload = dataset_baselines(prepared, "ctr")
    constant, rate = payload["baselines"]
    assert constant["model"] == "baseline: constant" and rate["model"] == "baseline: uid+iid rate"
    # The constant predictor scores every row with the training rate, 1/3: AUC 0.5, logloss the label's entropy.
    p = 1 / 3
    assert constant["settings"]["rate"] == pytest.approx(p)
    assert constant["val"]["auc"] == 0.5 and constant["val"]["logloss"] == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))
    # The item's rate separates the classes; the user's (1/3 for every user, as the prior) shifts nothing.
    assert rate["val"]["auc"] == 1.0 and rate["test"]["gauc"] == 1.0
    m = rate["settings"]["prior_strength"]
    positive = (20 + m * p) / (20 + m)  # i0 or i1: 20 training rows (4 users x 5), all positive
    negative = (0 + m * p) / (20 + m)  # i2..i5: 20 training rows each, none positive
    # Every row is scored with its item's smoothed rate: a third of the rows positive, two thirds negative.
    expected = -(math.log(positive) + 2 * math.log(1 - negative)) / 3
    assert rate["val"]["logloss"] == pytest.approx(expected)
    assert (prepared.directory / BASELINES_FILE).exists()


def test_baselines_learn_from_train_only(tmp_path) -> None:
    """Flipping every test label changes no validation number and turns the test AUC around."""
    base = dataset_baselines(prepare_dataset(_raw(tmp_path / "a"), tmp_path / "cache"), "ctr")["baselines"][1]
    flipped = dataset_baselines(prepare_dataset(_raw(tmp_path / "b", flip_test=True), tmp_path / "cache"), "ctr")["baselines"][1]
    assert flipped["val"] == base["val"] and flipped["settings"] == base["settings"]
    assert base["test"]["auc"] == 1.0 and flipped["test"]["auc"] == 0.0


def test_cached_baselines_are_read_not_recomputed(tmp_path) -> None:
    prepared = prepare_dataset(_raw(tmp_path / "raw"), tmp_path / "cache")
    first = dataset_baselines(prepared, "ctr")
    path = prepared.directory / BASELINES_FILE
    marked = {**first, "marker": "cached"}
    path.write_text(json.dumps(marked))
    assert dataset_baselines(prepared, "ctr")["marker"] == "cached"
    assert dataset_baselines(prepared, "search") is None  # a task without baselines


def test_rate_fields_are_the_marked_ones_else_the_largest_vocabularies() -> None:
    def schema(roles: dict[str, str]) -> Schema:
        sizes = {"a": 10, "b": 500, "c": 40, "d": 300}
        return Schema([FieldSpec(n, "categorical", vocab_size=v, role=roles.get(n)) for n, v in sizes.items()])

    assert [f.name for f in rate_fields(schema({"c": "user", "a": "item"}))] == ["c", "a"]
    assert [f.name for f in rate_fields(schema({}))] == ["b", "d"]


def test_next_item_most_popular_is_a_baseline_too(small_next_item, tmp_path) -> None:
    _, dm = small_next_item
    payload = dataset_baselines(dm.prepared, "next_item", ks=(10, 20))
    (popular,) = payload["baselines"]
    assert popular["model"] == "baseline: most popular" and {"ndcg@20", "hr@10", "mrr"} <= set(popular["val"])
    # More popular items than the cutoff can hold: a hit at 10 is a hit at 20, never the other way round.
    assert 0 < popular["test"]["hr@10"] <= popular["test"]["hr@20"] < 1
    assert np.isfinite(popular["val"]["ndcg@20"])
    assert popular["val"] != popular["test"]  # each split scored on its own targets
