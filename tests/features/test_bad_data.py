"""Issue #11, items 8-10: one rule for raw values in every split, in fit, transform and serving, and errors
that name the file, the split, the row and the column, raised before any training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data import prepare_dataset
from recsys.features import FeatureError, FeaturePipeline
from recsys.features.records import RecordEncoder

FIELDS = [{"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"},
          {"name": "price", "kind": "numeric", "norm": "standard", "fill": "mean"}]
ROWS = 30


def _text(split: str) -> str:
    rng = np.random.default_rng({"train": 0, "valid": 1, "test": 2}[split])
    lines = ["label,user,price"] + [f"{i % 2},u{rng.integers(0, 9)},{rng.uniform(1, 100):.2f}" for i in range(ROWS)]
    return "\n".join(lines) + "\n"


def _set(text: str, row: int, column: int, value: str) -> str:
    """`text` with data row `row` (1-based, the header is not a row) holding `value` in column `column`."""
    lines = text.splitlines()
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def _dataset(tmp_path: Path, broken: dict[str, str | bytes] | None = None) -> dict:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    for split in ("train", "valid", "test"):
        content = (broken or {}).get(split, _text(split))
        (raw / f"{split}.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
    return {"name": "tiny", "root": str(raw), "files": {s: f"{s}.csv" for s in ("train", "valid", "test")}, "fields": FIELDS}


def _refused(tmp_path: Path, broken: dict[str, str | bytes]) -> str:
    """prepare_dataset's error for the broken splits; and nothing was written (only the digest memo)."""
    with pytest.raises(FeatureError) as err:
        prepare_dataset(_dataset(tmp_path, broken), tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["file-digests"]
    return str(err.value)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize("value", ["inf", "-inf", "1e309", "N/A!"])
def test_a_value_that_is_not_a_finite_number_is_refused_in_every_split(tmp_path, split, value) -> None:
    """Items 8 and 9: `N/A!` in valid used to become 0.0 silently (train refused it), and `inf` in train
    trained a NaN model; both are refused in every split, naming the file, the split, the row, the column."""
    message = _refused(tmp_path, {split: _set(_text(split), 17, 2, value)})
    assert message.startswith(f"{split} split ({tmp_path / 'raw' / f'{split}.csv'}), row 17 (line 18): column 'price' holds {value!r}")
    assert "numeric values must be finite numbers" in message


def test_nan_and_empty_are_missing_take_the_fill_and_stay_out_of_the_statistics(tmp_path) -> None:
    """Item 8's other half: NaN is missing, as null is; before, one NaN in train made the fitted mean and
    std NaN, and with them every normalised value of the column."""
    train = _set(_set(_text("train"), 3, 2, "NaN"), 4, 2, "")
    valid = _set(_set(_text("valid"), 5, 2, "nan"), 6, 2, "")
    prepared = prepare_dataset(_dataset(tmp_path, {"train": train, "valid": valid}), tmp_path / "cache")
    stats = prepared.schema()["price"].stats
    finite = pl.read_csv(tmp_path / "raw" / "train.csv")["price"].cast(pl.Float64, strict=False).fill_nan(None).drop_nulls()
    assert all(np.isfinite(v) for v in (stats["mean"], stats["std"], stats["min"], stats["max"]))
    assert stats["mean"] == pytest.approx(finite.mean()) and stats["fill"] == stats["mean"]
    price = pl.read_parquet(prepared.split_path("valid"))["price"].to_numpy()
    assert np.isfinite(price).all() and price[4] == price[5] == pytest.approx(0.0, abs=1e-6)  # the mean, standardised


def test_the_policy_is_the_same_in_fit_transform_and_serving() -> None:
    """Refused in fit and in transform with the row and column, refused by the serving encoder with the
    instance and field; a finite value outside the fitted range is clipped to it in both transforms."""
    train = pl.DataFrame({"label": [0, 1, 0, 1], "user": ["a", "b", "a", "c"], "price": [10.0, 20.0, 30.0, 40.0]})
    pipe = FeaturePipeline(FIELDS).fit(train)
    with pytest.raises(FeatureError, match=r"fit input, row 3: column 'price' holds 'inf'"):
        FeaturePipeline(FIELDS).fit(train.with_columns(price=pl.Series([10.0, 20.0, float("inf"), 40.0])))
    with pytest.raises(FeatureError, match=r"transform input, row 2: column 'price' holds '-inf'"):
        pipe.transform(train.with_columns(price=pl.Series([10.0, float("-inf"), 30.0, 40.0]))).collect()
    encoder = RecordEncoder(pipe)
    for value in (float("inf"), "-Infinity", "1e309", 10**400):
        with pytest.raises(FeatureError, match=r"instance 1: numeric field 'price' is .*must be finite"):
            encoder.encode([{"user": "a", "price": 1.0}, {"user": "a", "price": value}])

    far = [1e308, -1e308, 40.0, 10.0, 1e5, None, float("nan")]
    frame = pl.DataFrame({"user": ["a"] * len(far), "price": far}, schema={"user": pl.String, "price": pl.Float64})
    transformed = pipe.transform(frame, require_label=False).collect()["price"].to_numpy()
    _, dense, _ = encoder.encode([{"user": "a", "price": v} for v in far])
    np.testing.assert_allclose(dense[:, 0], transformed, rtol=0, atol=1e-6)
    assert transformed[0] == transformed[2] == transformed[4] and transformed[1] == transformed[3]  # clipped to [10, 40]
    assert transformed[5] == transformed[6] == pytest.approx(0.0, abs=1e-6)  # missing: the mean, standardised


def test_values_beyond_float32_after_normalisation_are_refused_at_fit() -> None:
    fields = [{"name": "label", "kind": "label"}, {"name": "price", "kind": "numeric"}]  # norm null: raw values
    with pytest.raises(FeatureError, match=r"numeric field 'price': values from 1 to 1e\+39 do not fit float32 after norm None"):
        FeaturePipeline(fields).fit(pl.DataFrame({"label": [0, 1], "price": [1.0, 1e39]}))
    FeaturePipeline([*fields[:1], {"name": "price", "kind": "numeric", "norm": "log"}]).fit(pl.DataFrame({"label": [0, 1], "price": [1.0, 1e39]}))


def test_invalid_utf8_names_its_column_not_the_label(tmp_path) -> None:
    """Item 10: bytes that are not UTF-8 in the `user` column were reported as "label: invalid utf-8"."""
    train = _text("train").encode().split(b"\n")
    train[9] = train[9].replace(b",u", b",\xff\xfeu", 1)
    message = _refused(tmp_path, {"train": b"\n".join(train)})
    assert message.startswith(f"train split ({tmp_path / 'raw' / 'train.csv'}), row 9 (line 10): column 'user' is not valid UTF-8")


def test_a_ragged_row_is_named(tmp_path) -> None:
    """Item 10: polars' "found more fields than defined in 'Schema'" named no file and no row."""
    lines = _text("valid").splitlines()
    lines[13] += ",7"
    message = _refused(tmp_path, {"valid": "\n".join(lines) + "\n"})
    assert message == f"valid split ({tmp_path / 'raw' / 'valid.csv'}), row 13 (line 14): 4 fields where the first line has 3"


def test_an_empty_validation_file_is_refused_up_front(tmp_path) -> None:
    """Item 10: a 0-byte file gave polars' NoDataError; a header-only one trained a whole epoch, then failed
    on a missing val/auc, leaving a feature cache marked complete with a 0-row split."""
    path = tmp_path / "raw" / "valid.csv"
    message = _refused(tmp_path, {"valid": ""})
    assert message == f"valid split ({path}): the file is empty (0 bytes); it needs a header and at least one row"
    message = _refused(tmp_path, {"valid": "label,user,price\n"})
    assert message == f"valid split ({path}) is empty: it has no rows (a header only)"
    message = _refused(tmp_path, {"test": "\n"})
    assert message.startswith(f"test split ({tmp_path / 'raw' / 'test.csv'}): the file is empty")


def test_a_missing_column_names_the_split_and_file(tmp_path) -> None:
    message = _refused(tmp_path, {"test": _text("test").replace("price", "prize", 1)})
    assert message.startswith(f"test split ({tmp_path / 'raw' / 'test.csv'}): column 'price' (field 'price') is missing")
