"""`recsys bench next-item` writes RecBole's inputs from our split: checked against the split itself, so
that RecBole's own leave-one-out (last item test, second to last validation, ordered by timestamp) sees
exactly our training windows, validation inputs and test inputs, and masks exactly our histories."""

from __future__ import annotations

import json

import polars as pl

from recsys.bench.next_item import write_peer_inputs


def test_atomic_file_and_masks_reproduce_our_leave_one_out(tmp_path) -> None:
    from recsys.features.recipes import leave_one_out

    users = pl.DataFrame({"user": [7, 9, 11], "items": [[1, 2, 3, 4, 5, 6], [10, 11, 12], list(range(100, 160))]})
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, frame in leave_one_out(users, "test").items():
        frame.write_parquet(raw / f"{split}.parquet")
    counts = write_peer_inputs(raw, tmp_path / "work", "toy", window=50)
    inter = pl.read_csv(tmp_path / "work" / "dataset" / "toy" / "toy.inter", separator="\t",
                        schema_overrides={"user_id:token": pl.String, "item_id:token": pl.String})
    by_user = {u: group.sort("timestamp:float") for (u,), group in inter.group_by("user_id:token")}
    for user, items in zip(users["user"], users["items"]):
        rows = by_user[str(user)]
        train, valid, test = items[:-2], items[-2], items[-1]
        # The training window (its last 50 items), then the validation item, then the test item, in order.
        assert rows["item_id:token"].to_list() == [str(i) for i in [*train[-50:], valid, test]]
        assert rows["timestamp:float"].to_list() == list(map(float, range(len(rows))))
    masks = json.loads((tmp_path / "work" / "exclude.json").read_text())
    assert masks["valid"]["11"] == [str(i) for i in range(100, 158)]  # the whole history, not only the window
    assert masks["test"]["11"] == [str(i) for i in range(100, 159)]  # ... and the validation item at test time
    assert counts == {"users": 3, "train_targets": (4 - 1) + (1 - 1) + (50 - 1)}
