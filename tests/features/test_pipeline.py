"""Every transform of the feature pipeline, its artifacts, and the bad inputs it must name."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from recsys.features import OOV_ID, FeatureError, FeaturePipeline, Schema
from recsys.features.hashing import bucket_expr, with_int64_hash
from recsys.kernels.hashing import hash_bucket, stable_hash


def _train() -> pl.DataFrame:
    return pl.DataFrame({
        "label": [1, 0, 1, 0, 1, 0],
        "user": ["u1", "u2", "u1", "u3", "u1", "u2"],
        "item": [10, 11, 10, 12, 13, 11],
        "hist": ["10^11", "", "10^11^12^13", None, "13", "11"],
        "price": [1.0, None, 3.0, 4.0, 100.0, 2.0],
    })


def test_categorical_vocabulary_min_count_oov_and_padding() -> None:
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "user", "kind": "categorical", "min_count": 2},
    ]).fit(_train())
    vocab = pipe.vocabs["user"]
    assert vocab["token"].to_list() == ["u1", "u2"]  # u3 seen once: dropped; most frequent first
    assert vocab["id"].to_list() == [2, 3]  # 0 padding and 1 out-of-vocabulary stay free
    out = pipe.transform(pl.DataFrame({"label": [0, 1, 1], "user": ["u2", "u3", None]})).collect()
    assert out["user"].to_list() == [3, OOV_ID, OOV_ID]
    assert pipe.schema["user"].vocab_size == 4


def test_fit_uses_train_only_values_from_other_splits_are_oov() -> None:
    pipe = FeaturePipeline([{"name": "label", "kind": "label"}, {"name": "item", "kind": "categorical"}]).fit(_train())
    out = pipe.transform(pl.DataFrame({"label": [1, 0], "item": [10, 999]})).collect()
    assert out["item"][0] >= 2 and out["item"][1] == OOV_ID


def test_hashing_polars_and_torch_agree_on_the_same_buckets() -> None:
    values = [0, 1, -1, 7, 983, 2**40 + 3, -(2**62), 2**63 - 1, -(2**63)]
    frame = with_int64_hash(pl.DataFrame({"x": values}).lazy(), "x", "h", seed=17).collect()
    torch_hash = stable_hash(torch.tensor(values), seed=17)
    assert frame["h"].cast(pl.Int64).to_list() == torch_hash.tolist()
    buckets = frame.select(bucket_expr(pl.col("h"), 1000))["h"].to_list()
    assert buckets == hash_bucket(torch.tensor(values), 1000, seed=17).tolist()
    assert min(buckets) >= 2 and max(buckets) < 1002
    assert len(set(torch_hash.tolist())) == len(values)  # no collisions on these


def test_hashed_categorical_field_int_and_string_sources() -> None:
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "item", "kind": "categorical", "hash_buckets": 50},
        {"name": "user", "kind": "categorical", "hash_buckets": 50},
    ]).fit(_train())
    assert pipe.schema["item"].vocab_size == 52 and "item" not in pipe.vocabs
    out = pipe.transform(_train()).collect()
    assert out["item"].min() >= 2 and out["item"].max() < 52
    # Same value, same bucket; and a value never seen in training still hashes (no OOV for hashed ids).
    assert out["user"][0] == out["user"][2]
    unseen = pipe.transform_records([{"user": "brand-new", "item": 10, "hist": "", "price": 1}])
    assert unseen["user"][0] >= 2
    expected = hash_bucket(torch.tensor([10]), 50, seed=0x5EED).item()
    assert out["item"][0] == expected


def test_numeric_fill_and_normalisations() -> None:
    frame = _train()
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "std", "kind": "numeric", "source": "price", "fill": "mean", "norm": "standard"},
        {"name": "mm", "kind": "numeric", "source": "price", "fill": 0.0, "norm": "minmax"},
        {"name": "lg", "kind": "numeric", "source": "price", "fill": "median", "norm": "log"},
        {"name": "bk", "kind": "numeric", "source": "price", "buckets": 3},
    ]).fit(frame)
    out = pipe.transform(frame).collect()
    prices = frame["price"].drop_nulls()
    mean, std = prices.mean(), prices.std()
    assert out["std"].to_list() == pytest.approx([(p - mean) / std if p is not None else 0.0 for p in frame["price"]], abs=1e-5)
    # min and max come from the observed values (1 and 100); the fill value is then scaled like any other.
    assert out["mm"].to_list() == pytest.approx([(p - 1) / 99 for p in [1.0, 0.0, 3.0, 4.0, 100.0, 2.0]], abs=1e-6)
    assert out["lg"][1] == pytest.approx(torch.log1p(torch.tensor(prices.median())).item(), abs=1e-5)
    buckets = out["bk"].to_list()
    assert min(buckets) >= 2
    order = sorted(range(6), key=lambda i: [1.0, 0.0, 3.0, 4.0, 100.0, 2.0][i])
    assert [buckets[i] for i in order] == sorted(buckets)  # bucket ids are monotone in the value
    assert buckets[4] > buckets[0]
    assert pipe.schema["bk"].is_sparse and pipe.schema["bk"].vocab_size == len(pipe.schema["bk"].stats["boundaries"]) + 3


def test_sequence_from_string_and_list_truncates_to_most_recent_and_pads() -> None:
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "item", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 3, "share_vocab_with": "item"},
    ]).fit(_train())
    ids = dict(zip(pipe.vocabs["item"]["token"].to_list(), pipe.vocabs["item"]["id"].to_list()))
    out = pipe.transform(_train()).collect()
    rows = out["hist"].to_list()
    assert rows[0] == [0, ids["10"], ids["11"]]  # left-padded, most recent last
    assert rows[1] == [0, 0, 0] and rows[3] == [0, 0, 0]  # empty string and null
    assert rows[2] == [ids["11"], ids["12"], ids["13"]]  # truncated to the 3 most recent
    as_list = pipe.transform_records([{"item": 10, "hist": ["10", "11", "12", "13", "777"]}])
    assert as_list["hist"].to_list()[0] == [ids["12"], ids["13"], OOV_ID]
    as_str = pipe.transform_records([{"item": 10, "hist": "12^13^777"}])
    assert as_str["hist"].to_list() == as_list["hist"].to_list()
    assert pipe.schema["hist"].table == "item"


def test_transform_records_matches_the_batch_transform() -> None:
    fields = [
        {"name": "label", "kind": "label"},
        {"name": "user", "kind": "categorical"},
        {"name": "item", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 4, "share_vocab_with": "item"},
        {"name": "price", "kind": "numeric", "norm": "standard", "fill": "mean"},
    ]
    fields.append({"name": "group_user", "kind": "group", "source": "user"})
    frame = _train()
    pipe = FeaturePipeline(fields).fit(frame)
    offline = pipe.transform(frame).collect().drop("label", "group_user")
    online = pipe.transform_records(frame.drop("label").to_dicts())
    assert online.equals(offline)


def test_artifacts_round_trip_as_json_and_parquet(tmp_path) -> None:
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "user", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 2, "share_vocab_with": "user"},
        {"name": "price", "kind": "numeric", "norm": "minmax"},
    ]).fit(_train())
    pipe.save(tmp_path / "features")
    files = sorted(p.relative_to(tmp_path / "features").as_posix() for p in (tmp_path / "features").rglob("*") if p.is_file())
    assert files == ["schema.json", "vocab/user.parquet"]
    json.loads((tmp_path / "features" / "schema.json").read_text())
    loaded = FeaturePipeline.load(tmp_path / "features")
    assert loaded.transform(_train()).collect().equals(pipe.transform(_train()).collect())
    assert Schema.load(tmp_path / "features" / "schema.json").fingerprint() == pipe.schema.fingerprint()


@pytest.mark.parametrize(
    ("frame", "fields", "message"),
    [
        (pl.DataFrame({"label": [1], "user": ["a"]}), [{"name": "item", "kind": "categorical"}], "column 'item'"),
        (pl.DataFrame({"label": [1], "price": ["cheap"]}), [{"name": "price", "kind": "numeric"}], "price"),
        (pl.DataFrame({"label": [1], "hist": [3]}), [{"name": "hist", "kind": "sequence", "max_len": 2}], "sequence field 'hist'"),
        (pl.DataFrame({"label": [], "user": []}, schema={"label": pl.Int64, "user": pl.String}), [{"name": "user", "kind": "categorical"}], "empty"),
        (pl.DataFrame({"label": [0, 1, 2], "user": ["a", "b", "c"]}), [{"name": "user", "kind": "categorical"}],
         "row 3: label column 'label' holds '2'; labels must be 0 or 1"),
        (pl.DataFrame({"label": [0, -1], "user": ["a", "b"]}), [{"name": "user", "kind": "categorical"}], "row 2: label column 'label' holds '-1'"),
    ],
    ids=["missing-column", "wrong-type", "sequence-not-a-list", "empty-input", "non-binary-label", "negative-label"],
)
def test_bad_inputs_are_named(frame, fields, message) -> None:
    with pytest.raises(FeatureError) as err:
        FeaturePipeline([{"name": "label", "kind": "label"}, *fields]).fit(frame)
    assert message in str(err.value)


def test_schema_data_mismatch_at_transform_and_serving() -> None:
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"},
        {"name": "price", "kind": "numeric"}, {"name": "hist", "kind": "sequence", "max_len": 2, "share_vocab_with": "user"},
    ]).fit(_train())
    with pytest.raises(FeatureError, match="column 'price'"):
        pipe.transform(_train().drop("price"))
    with pytest.raises(FeatureError, match="sequence field 'hist'"):
        pipe.transform(_train().with_columns(pl.lit(3).alias("hist")))
    with pytest.raises(FeatureError, match="record 0: field 'user' is missing"):
        pipe.transform_records([{"price": 1.0, "hist": ""}])
    with pytest.raises(FeatureError, match="'price' needs a number"):
        pipe.transform_records([{"user": "u1", "price": "a lot", "hist": ""}])
    with pytest.raises(FeatureError, match="transform before fit"):
        FeaturePipeline([{"name": "user", "kind": "categorical"}]).transform(_train())
    with pytest.raises(FeatureError, match="unknown kind"):
        FeaturePipeline([{"name": "user", "kind": "categorial"}])
    with pytest.raises(FeatureError, match="unknown setting"):
        FeaturePipeline([{"name": "user", "kind": "categorical", "maxlen": 3}])


def test_transform_is_lazy_and_streams_to_parquet(tmp_path) -> None:
    pipe = FeaturePipeline([{"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"}]).fit(_train())
    lazy = pipe.transform(_train().lazy())
    assert isinstance(lazy, pl.LazyFrame)
    lazy.sink_parquet(tmp_path / "out.parquet")
    assert pl.read_parquet(tmp_path / "out.parquet").height == 6


def test_prepare_dataset_refuses_a_split_with_a_bad_label_and_leaves_no_cache(tmp_path) -> None:
    from recsys.data import prepare_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    good = pl.DataFrame({"label": [0, 1, 1], "user": ["a", "b", "a"]})
    good.write_csv(raw / "train.csv")
    good.write_csv(raw / "valid.csv")
    pl.DataFrame({"label": [0, 3], "user": ["a", "b"]}).write_csv(raw / "test.csv")
    cfg = {"name": "tiny", "root": str(raw), "files": {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"},
           "fields": [{"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"}]}
    with pytest.raises(FeatureError, match=r"test split \(.*test.csv\), row 2 \(line 3\): label column 'label' holds '3'"):
        prepare_dataset(cfg, tmp_path / "cache")
    # nothing half-written left behind (only the memo of the raw files' digests)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["file-digests"]
    pl.DataFrame({"label": [0, 1], "user": ["a", "b"]}).write_csv(raw / "test.csv")
    prepared = prepare_dataset(cfg, tmp_path / "cache")
    assert (prepared.directory / "DONE").exists() and pl.read_parquet(prepared.split_path("test")).height == 2


def test_dataset_fingerprint_follows_file_contents_not_location_or_mtime(tmp_path) -> None:
    """The shared data folder is rewritten with new mtimes, and lives elsewhere on other machines: a run's
    data fingerprint must survive both (or it can no longer be exported), and change when a file does."""
    import os
    import shutil

    from recsys.data import prepare_dataset

    first = tmp_path / "first"
    first.mkdir()
    for split in ("train", "valid", "test"):
        pl.DataFrame({"label": [0, 1, 1], "user": ["a", "b", split]}).write_csv(first / f"{split}.csv")
    cfg = {"name": "tiny", "files": {s: f"{s}.csv" for s in ("train", "valid", "test")},
           "fields": [{"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"}]}
    before = prepare_dataset({**cfg, "root": str(first)}, tmp_path / "cache").fingerprint

    copy = shutil.copytree(first, tmp_path / "copy", copy_function=shutil.copyfile)  # new paths, new mtimes
    os.utime(copy / "train.csv", ns=(1, 1))
    assert prepare_dataset({**cfg, "root": str(copy)}, tmp_path / "cache").fingerprint == before

    pl.DataFrame({"label": [0, 1, 1], "user": ["a", "b", "c"]}).write_csv(copy / "valid.csv")
    assert prepare_dataset({**cfg, "root": str(copy)}, tmp_path / "cache").fingerprint != before


def test_row_counts_are_training_occurrences_by_id() -> None:
    raw = pl.DataFrame({"label": [1, 0, 1], "item": ["x", "y", "x"], "hist": ["x^y", "y", ""]})
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "item", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 2, "share_vocab_with": "item"},
    ]).fit(raw)
    counts = pipe.row_counts()["item"]
    ids = pipe.transform(pl.DataFrame({"label": [0, 0], "item": ["x", "y"], "hist": ["", ""]})).collect()["item"].to_list()
    # x: 2 as a target + 1 in histories; y: 1 + 2. Padding and OOV rows count nothing.
    assert counts[ids[0]] == 3 and counts[ids[1]] == 3 and counts[0] == 0 and counts[1] == 0 and len(counts) == 4
