"""`recsys.data.inspection`: the numbers `recsys data inspect` and the start of `recsys train` report, on raw
files small enough to count by hand, and the warnings for what will hurt a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.inspection import inspect_dataset, inspect_splits

FIELDS = [
    {"name": "label", "kind": "label"},
    # min_count 2: a user seen once in train gets no id of its own, so it counts as unseen everywhere.
    {"name": "user", "kind": "categorical", "min_count": 2, "role": "user"},
    {"name": "price", "kind": "numeric"},
    {"name": "hist", "kind": "sequence", "max_len": 4},
]


def _write(root: Path, split: str, header: str, rows: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.csv").write_text("\n".join([header, *rows]) + "\n")


def _files(root: Path) -> dict[str, Path]:
    return {s: root / f"{s}.csv" for s in ("train", "valid", "test")}


def test_rows_label_rates_cardinality_nulls_unseen_values_and_sequence_lengths(tmp_path) -> None:
    header = "label,user,price,hist"
    # train: 8 rows, 3 positive; users u0 u0 u1 u1 u2 u2 u3 and one empty (null); u3 is seen once (< min_count 2).
    # Histories of 0..7 items t0..t6: lengths 0,1,...,7, so 3 rows (5, 6, 7 items) are longer than max_len 4.
    hist = ["", "t0", "t0^t1", "t0^t1^t2", "t0^t1^t2^t3", "t0^t1^t2^t3^t4", "t0^t1^t2^t3^t4^t5", "t0^t1^t2^t3^t4^t5^t6"]
    users = ["u0", "u0", "u1", "u1", "u2", "u2", "u3", ""]
    labels = [1, 0, 1, 0, 1, 0, 0, 0]
    _write(tmp_path, "train", header, [f"{y},{u},1.5,{h}" for y, u, h in zip(labels, users, hist)])
    # valid: 4 rows, 1 positive; users u0 u1 u3 u9: u3 (too rare in train) and u9 (never seen) are unseen: 2 of 4.
    # Histories: 4 tokens, one of them (t9) unseen.
    _write(tmp_path, "valid", header, ["1,u0,2,t0^t9", "0,u1,2,t1", "0,u3,,t2", "0,u9,2,"])
    # test: 4 rows, 2 positive; users u0 u0 u0 u5: 1 of 4 unseen; no history token unseen.
    _write(tmp_path, "test", header, ["1,u0,2,t0", "1,u0,2,t0", "0,u0,2,t0", "0,u5,2,t0"])

    result = inspect_splits(_files(tmp_path), {}, FIELDS, "handmade")

    assert result.rows == {"train": 8, "valid": 4, "test": 4}
    assert result.label_rate == pytest.approx({"train": 3 / 8, "valid": 1 / 4, "test": 2 / 4})
    fields = {f.name: f for f in result.fields}
    user = fields["user"]
    assert user.role == "user" and user.cardinality == 4  # u0 u1 u2 u3: distinct raw values, the null left out
    assert user.null_share["train"] == pytest.approx(1 / 8)
    assert user.unseen_share == pytest.approx({"train": 1 / 7, "valid": 2 / 4, "test": 1 / 4})
    assert fields["price"].null_share["valid"] == pytest.approx(1 / 4)
    seq = fields["hist"]
    assert seq.cardinality == 7  # t0..t6
    assert seq.lengths["train"]["max"] == 7 and seq.cut_share["train"] == pytest.approx(3 / 8)
    assert seq.unseen_share["valid"] == pytest.approx(1 / 4) and seq.unseen_share["test"] == 0.0
    assert result.warnings == []  # 8 rows: too few to call a field unique per row; nothing else is wrong
    text = result.table()
    assert "50.0%" in text and "handmade" in text and "user" in text
    assert result.summary().startswith("data handmade: 8 / 4 / 4 rows (train / valid / test), label rate 37.5% / 25.0% / 50.0%")


def _dataset(root: Path, *, positives: int, rows: int = 400, test_users_unseen: float = 0.0, valid_rows: bool = True) -> None:
    header = "label,user,rowid,hist"
    train = [f"{int(i < positives)},u{i % 20},r{i},h{i % 5}" for i in range(rows)]
    _write(root, "train", header, train)
    n_unseen = int(100 * test_users_unseen)
    test = [f"{i % 2},{'new' if i < n_unseen else 'u'}{i % 20},r{i},h1" for i in range(100)]
    _write(root, "test", header, test)
    _write(root, "valid", header, [f"{i % 2},u{i % 20},r{i},h1" for i in range(100)] if valid_rows else [])


def _config(root: Path) -> dict:
    return {"name": "generated", "root": str(root), "files": {s: f"{s}.csv" for s in ("train", "valid", "test")},
            "fields": [{"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"},
                       {"name": "rowid", "kind": "categorical"}, {"name": "hist", "kind": "sequence", "max_len": 3}]}


def test_warnings_name_what_will_hurt(tmp_path) -> None:
    _dataset(tmp_path / "bad", positives=1, test_users_unseen=0.8, valid_rows=False)
    warnings = inspect_dataset(_config(tmp_path / "bad"), tmp_path / "cache").warnings
    text = "\n".join(warnings)
    assert "the valid split has no rows" in text
    assert "the label is almost constant in train (0.2% positive)" in text
    assert "field 'rowid' is nearly unique per row (400 values in 400 train rows)" in text
    assert "field 'user': 80.0% of its test values are unseen in train" in text
    assert "field 'hist'" not in text and "field 'user' is" not in text

    _dataset(tmp_path / "good", positives=200, rows=400, test_users_unseen=0.3)
    config = _config(tmp_path / "good")
    config["fields"] = [f for f in config["fields"] if f["name"] != "rowid"]
    good = inspect_dataset(config, tmp_path / "cache")
    assert good.warnings == [], good.warnings  # 30% unseen is below the threshold; a balanced label
    assert good.summary().endswith("no warnings")


def test_a_split_train_would_refuse_is_named_for_every_split_at_once(tmp_path) -> None:
    from recsys.features import FeatureError

    _dataset(tmp_path, positives=10)
    for split in ("valid", "test"):
        text = (tmp_path / f"{split}.csv").read_text().replace("\n0,", "\n2,", 1)
        (tmp_path / f"{split}.csv").write_text(text)
    with pytest.raises(FeatureError) as err:
        inspect_dataset(_config(tmp_path), tmp_path / "cache")
    assert "valid split" in str(err.value) and "test split" in str(err.value) and "labels must be 0 or 1" in str(err.value)
