"""The Criteo-shaped generator: Criteo's fields and cardinalities, Zipf ids, labels a model can learn,
part by part, deterministic by seed, a small set the prefix of a large one, an interrupted run resumed."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from recsys.data.criteo_synthetic import CARDINALITY, CATEGORICAL, NUMERIC, criteo_part, write_criteo_synthetic
from recsys.metrics import auc


def test_fields_cardinalities_zipf_ids_and_learnable_labels() -> None:
    frame = criteo_part(seed=1, split="train", part=0, rows=60_000)
    assert frame.columns == ["label", *NUMERIC, *CATEGORICAL, "planted_logit"] and len(NUMERIC) == 13 and len(CATEGORICAL) == 26
    assert max(CARDINALITY.values()) > 10_000_000 - 1 and sorted(CARDINALITY.values())[-4] > 5_000_000
    for name in CATEGORICAL:
        values = frame[name].drop_nulls()
        assert 0 <= values.min() and values.max() < CARDINALITY[name], name
    # Zipf: in the largest field, the most frequent 1% of the values seen cover far more than 1% of the rows.
    counts = frame["C3"].drop_nulls().value_counts(sort=True)["count"].to_numpy()
    assert counts[: max(1, len(counts) // 100)].sum() > 0.2 * counts.sum()
    assert counts[0] > 50 * np.median(counts)
    assert 0.2 < frame["label"].mean() < 0.4
    assert 0.1 < frame["I12"].null_count() / len(frame) and frame["I2"].null_count() == 0
    planted = auc(torch.tensor(frame["planted_logit"].to_numpy()), torch.tensor(frame["label"].to_numpy(), dtype=torch.float32))
    assert planted > 0.8
    # The label depends on the ids: the rows of C6's most common value differ in CTR from the others.
    ctr = frame.group_by("C6").agg(pl.col("label").mean(), pl.len()).filter(pl.col("len") > 500)["label"]
    assert ctr.max() - ctr.min() > 0.05


def test_parts_are_deterministic_and_a_small_set_is_the_prefix_of_a_large_one(tmp_path) -> None:
    small = write_criteo_synthetic(tmp_path / "small", n_train=2_000, n_valid=300, n_test=300, seed=4, part_rows=1_000,
                                   progress=False)
    large = write_criteo_synthetic(tmp_path / "large", n_train=3_500, n_valid=300, n_test=300, seed=4, part_rows=1_000,
                                   progress=False)
    other = write_criteo_synthetic(tmp_path / "other", n_train=2_000, n_valid=300, n_test=300, seed=5, part_rows=1_000,
                                   progress=False)
    assert len(list((large / "train.parquet").glob("part-*.parquet"))) == 4
    read = lambda d, s: pl.read_parquet(d / f"{s}.parquet")  # noqa: E731
    assert read(large, "train").height == 3_500
    assert read(small, "train").equals(read(large, "train").head(2_000))
    assert read(small, "valid").equals(read(large, "valid"))
    assert not read(small, "train").equals(read(other, "train"))
    parts = [pl.read_parquet(p) for p in sorted((large / "train.parquet").glob("part-*.parquet"))]
    assert not parts[0].equals(parts[1])  # each part draws from its own seed


def test_an_interrupted_run_is_finished_not_redone(tmp_path) -> None:
    options = dict(n_train=3_000, n_valid=200, n_test=200, seed=2, part_rows=1_000, progress=False)
    directory = write_criteo_synthetic(tmp_path, **options)
    parts = sorted((directory / "train.parquet").glob("part-*.parquet"))
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    expected = pl.read_parquet(directory / "train.parquet")
    parts[1].unlink()
    (directory / "train.done.json").unlink()  # as if the run had stopped before writing part 1
    write_criteo_synthetic(tmp_path, **options)
    assert pl.read_parquet(directory / "train.parquet").equals(expected)
    assert {p.name: p.stat().st_mtime_ns for p in parts if p.name != parts[1].name} == {
        k: v for k, v in stamps.items() if k != parts[1].name}
    write_criteo_synthetic(tmp_path, **{**options, "seed": 3})  # other settings: the split is rewritten
    assert not pl.read_parquet(directory / "train.parquet").equals(expected)
