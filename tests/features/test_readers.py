"""Readers for CSV/TSV, Parquet and libFM, on the real files in RECSYS_DATA_DIR and on small ones."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.features import FeatureError, FeaturePipeline, scan_libfm, scan_table


def test_csv_tsv_parquet_read_the_same_table(tmp_path) -> None:
    frame = pl.DataFrame({"label": [0, 1], "user": [3, 4], "tag": ["a", "b"]})
    frame.write_csv(tmp_path / "t.csv")
    frame.write_csv(tmp_path / "t.tsv", separator="\t")
    frame.write_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.tsv", "t.parquet"):
        assert scan_table(tmp_path / name).collect().equals(frame), name


def test_unknown_format_and_missing_file_are_named(tmp_path) -> None:
    with pytest.raises(FeatureError, match="not found"):
        scan_table(tmp_path / "nope.csv")
    (tmp_path / "x.bin").write_text("1")
    with pytest.raises(FeatureError, match="cannot tell the format"):
        scan_table(tmp_path / "x.bin")


def test_libfm_reader_on_the_frappe_release_matches_frappe_x1(real_file) -> None:
    libfm = real_file("frappe/frappe.test.libfm")
    csv = real_file("frappe_x1/test.csv")
    names = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
    from_libfm = scan_libfm(libfm, field_names=names).collect()
    from_csv = scan_table(csv).collect()
    assert from_libfm.columns == ["label", *names]  # all values are 1: no value columns
    assert from_libfm.height == 28_860
    assert from_libfm["label"].to_list() == from_csv["label"].cast(pl.Float64).to_list()  # -1 read as 0
    assert from_libfm.select(names).equals(from_csv.select(names).cast(pl.Int64))


def test_libfm_keeps_non_unit_values(tmp_path) -> None:
    (tmp_path / "x.libfm").write_text("1 3:1 7:0.5\n-1 4:1 8:2\n")
    frame = scan_table(tmp_path / "x.libfm").collect()
    assert frame.columns == ["label", "f0", "f1", "f1_value"]
    assert frame["f1_value"].to_list() == [0.5, 2.0] and frame["label"].to_list() == [1.0, 0.0]


def test_criteo_sample_numeric_and_categorical_with_missing_values(real_file) -> None:
    path = real_file("criteo_sample/criteo_kaggle_train_head1000.txt")
    ints = [f"I{i}" for i in range(1, 14)]
    cats = [f"C{i}" for i in range(1, 27)]
    lf = scan_table(path, "tsv", has_header=False, column_names=["label", *ints, *cats])
    fields = [{"name": "label", "kind": "label"}]
    fields += [{"name": c, "kind": "numeric", "norm": "log", "fill": 0.0} for c in ints]
    fields += [{"name": c, "kind": "categorical", "min_count": 2} for c in cats]
    pipe = FeaturePipeline(fields).fit(lf)
    out = pipe.transform(lf).collect()
    assert out.height == 1000 and out.null_count().sum_horizontal().item() == 0
    assert all(pipe.schema[c].vocab_size >= 2 for c in cats)
    assert (out["C1"] == 1).sum() < 1000  # some values are known, some fall back to OOV
    assert out.select(pl.col(ints).is_nan().any()).sum_horizontal().item() == 0


def test_schema_overrides_take_type_names_as_a_yaml_config_gives_them(tmp_path) -> None:
    """`reader: {schema_overrides: {zip: String}}` keeps a zip code's leading zero (inferred, it is an integer)."""
    import pytest

    from recsys.features import FeatureError, scan_table

    path = tmp_path / "rows.csv"
    path.write_text("zip,label\n01234,1\n98765,0\n")
    assert scan_table(path).collect()["zip"].to_list() == [1234, 98765]
    assert scan_table(path, schema_overrides={"zip": "String"}).collect()["zip"].to_list() == ["01234", "98765"]
    with pytest.raises(FeatureError, match="column 'zip' names 'Text', which is not a Polars type"):
        scan_table(path, schema_overrides={"zip": "Text"})
