"""The serving encoder gives exactly what the Polars transform gives, on every kind of field."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data import frame_to_batch
from recsys.features import FeatureError, FeaturePipeline
from recsys.features.records import RecordEncoder

FIELDS = [
    {"name": "label", "kind": "label"},
    {"name": "user", "kind": "categorical", "min_count": 2},
    {"name": "city", "kind": "categorical", "hash_buckets": 50},
    {"name": "shop", "kind": "categorical", "hash_buckets": 30},
    {"name": "price", "kind": "numeric", "norm": "standard", "fill": "mean"},
    {"name": "age", "kind": "numeric", "norm": "minmax"},
    {"name": "clicks", "kind": "numeric", "norm": "log"},
    {"name": "score", "kind": "numeric", "buckets": 4},
    {"name": "hist", "kind": "sequence", "share_vocab_with": "user", "max_len": 4},
]


@pytest.fixture(scope="module")
def pipeline() -> FeaturePipeline:
    rng = np.random.default_rng(0)
    n = 300
    train = pl.DataFrame({
        "label": rng.integers(0, 2, n),
        "user": [f"u{i}" for i in rng.integers(0, 40, n)],
        "city": [f"c{i}" for i in rng.integers(0, 100, n)],
        "shop": rng.integers(0, 1000, n),
        "price": rng.normal(10, 3, n),
        "age": rng.integers(18, 80, n).astype(float),
        "clicks": rng.integers(0, 500, n).astype(float),
        "score": rng.random(n),
        "hist": ["^".join(f"u{j}" for j in rng.integers(0, 40, rng.integers(0, 7))) for _ in range(n)],
    })
    return FeaturePipeline(FIELDS).fit(train)


RECORDS = [
    {"user": "u3", "city": "c7", "shop": 12, "price": 9.5, "age": 30, "clicks": 4, "score": 0.3, "hist": "u1^u2^u3"},
    {"user": "never-seen", "city": "nowhere", "shop": 99999, "price": None, "age": 90.0, "clicks": 0, "score": 1.5,
     "hist": "u5^u6^u7^u8^u9^u10"},
    {"user": None, "city": None, "shop": None, "price": "12.25", "age": None, "clicks": None, "score": None, "hist": None},
    {"user": "u1", "city": "c1", "shop": "42", "price": -3, "age": 18, "clicks": 1e6, "score": 0.0, "hist": ""},
    {"user": 7, "city": 3, "shop": 5, "price": 0, "age": 50, "clicks": 2.5, "score": 0.5, "hist": "u1^^u2^"},
]


def _with_list_sequences(records: list[dict]) -> list[dict]:
    return [{**r, "hist": None if r["hist"] is None else r["hist"].split("^")} for r in records]


# One request holds either delimited strings or lists here: transform_records types the whole column
# from its values, so it cannot mix the two (the encoder can, per instance).
@pytest.mark.parametrize("records", [RECORDS, _with_list_sequences(RECORDS)], ids=["strings", "lists"])
def test_encoder_equals_the_polars_transform(pipeline: FeaturePipeline, records: list[dict]) -> None:
    expected = frame_to_batch(pipeline.transform_records(records), pipeline.schema)
    sparse, dense, seq = RecordEncoder(pipeline).encode(records)
    np.testing.assert_array_equal(sparse, expected.sparse.numpy())
    np.testing.assert_array_equal(dense, expected.dense.numpy())
    np.testing.assert_array_equal(seq, expected.seq.numpy())


def test_sequences_as_list_or_string_truncated_or_refused(pipeline: FeaturePipeline) -> None:
    encoder = RecordEncoder(pipeline)
    base = dict(RECORDS[0])
    as_string = encoder.encode([{**base, "hist": "u1^u2^u3^u4^u5^u6"}])[2]
    as_list = encoder.encode([{**base, "hist": ["u1", "u2", "u3", "u4", "u5", "u6"]}])[2]
    recent = encoder.encode([{**base, "hist": ["u3", "u4", "u5", "u6"]}])[2]
    np.testing.assert_array_equal(as_string, as_list)
    np.testing.assert_array_equal(as_list, recent)  # the most recent max_len items are kept
    with pytest.raises(FeatureError, match="'hist' has 6 items; at most 5"):
        encoder.encode([{**base, "hist": ["u1"] * 6}], max_sequence_items=5)


@pytest.mark.parametrize(("change", "message"), [
    ({"user": ["u1"]}, "categorical field 'user' needs a string or a number, got list"),
    ({"price": "cheap"}, "numeric field 'price' needs a number, got 'cheap'"),
    ({"price": True}, "numeric field 'price' needs a number, got bool"),
    ({"hist": 5}, "sequence field 'hist' needs a list"),
    ({"hist": [{"id": 1}]}, "items must be strings or numbers"),
    ({"city": {"a": 1}}, "categorical field 'city' needs a string or a number, got dict"),
])
def test_wrong_types_name_the_field(pipeline: FeaturePipeline, change: dict, message: str) -> None:
    with pytest.raises(FeatureError, match=message.replace("(", r"\(").replace("[", r"\[")):
        RecordEncoder(pipeline).encode([RECORDS[0], {**RECORDS[0], **change}])


def test_a_missing_field_names_the_instance(pipeline: FeaturePipeline) -> None:
    record = {k: v for k, v in RECORDS[0].items() if k != "age"}
    with pytest.raises(FeatureError, match="instance 1: field 'age' is missing"):
        RecordEncoder(pipeline).encode([RECORDS[0], record])


def test_a_shared_history_is_encoded_once_and_equals_copies(pipeline: FeaturePipeline) -> None:
    """Candidates merged with one request context share the history object; the shortcut that encodes
    it once must give what encoding each copy gives, and must not leak into a row with its own history."""
    history = ["u1", "u2", "never-seen", "u3", "u4"]
    shared = [{**r, "hist": history} for r in _with_list_sequences(RECORDS)]
    copies = [{**r, "hist": list(history)} for r in _with_list_sequences(RECORDS)]
    shared[3] = {**shared[3], "hist": ["u9"]}
    copies[3] = {**copies[3], "hist": ["u9"]}
    encoder = RecordEncoder(pipeline)
    for a, b in zip(encoder.encode(shared), encoder.encode(copies)):
        np.testing.assert_array_equal(a, b)
    assert encoder.encode(shared)[2][3, 0, -2] == 0  # row 3 kept its own one-item history


def test_values_beyond_float_or_int64_range_never_raise_past_the_encoder(pipeline: FeaturePipeline) -> None:
    """Issue #11: an infinite number is refused by name (a 422 at the endpoint); on a hashed integer field it
    is out-of-vocabulary, as the Polars cast makes any non-integer. Both used to escape as OverflowError
    (a 500): int(inf) in the hashed path, float(10**400) in the numeric one."""
    encoder = RecordEncoder(pipeline)
    base = RECORDS[0]
    shop = [f.name for f in encoder.sparse_fields].index("shop")
    for value in (float("inf"), float("-inf"), 2**70, -(2**64), "1e400", float("nan")):
        sparse, _, _ = encoder.encode([base, {**base, "shop": value}])
        assert sparse[1, shop] == 1, value  # out-of-vocabulary
    for value in (10**400, float("inf"), "-inf"):
        with pytest.raises(FeatureError, match=r"instance 1: numeric field 'price' is .*; numbers must be finite"):
            encoder.encode([base, {**base, "price": value}])
