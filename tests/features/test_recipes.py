"""The data recipes on the real files: split sizes, negatives, histories, leakage and determinism, each
checked against a plain-Python reading of the raw files rather than against the recipe's own steps."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from omegaconf import OmegaConf

from recsys.features import FeatureError
from recsys.features.recipes import build_recipe, recipe_sources, write_recipe

AMAZON = {"name": "amazon_din", "dataset": "Beauty", "seed": 2021, "max_len": 100}
ML100K = {"name": "ml100k_long", "max_len": 512}


# ------------------------------------------------------------------------------------------- amazon_din
@pytest.fixture(scope="module")
def beauty_sequences(real_file) -> dict[int, list[int]]:
    lines = real_file("s3rec_seqrec/Beauty.txt").read_text().splitlines()
    return {int(line.split()[0]): [int(i) for i in line.split()[1:]] for line in lines}


@pytest.fixture(scope="module")
def beauty_first_attribute(real_file) -> dict[int, int]:
    attributes = json.loads(real_file("s3rec_seqrec/Beauty_item2attributes.json").read_text())
    return {int(item): attrs[0] if attrs else 0 for item, attrs in attributes.items()}


@pytest.fixture(scope="module")
def beauty(real_file) -> dict[str, pl.DataFrame]:
    data_root = real_file("s3rec_seqrec/Beauty.txt").parents[1]
    return build_recipe(AMAZON, data_root)


def test_amazon_split_sizes_match_the_raw_sequences(beauty, beauty_sequences) -> None:
    lengths = [len(items) for items in beauty_sequences.values()]
    # Positions 1..n-3 train, n-2 valid, n-1 test; each position gives a positive and a negative.
    assert beauty["train"].height == 2 * sum(max(n - 3, 0) for n in lengths)
    assert beauty["valid"].height == 2 * sum(n >= 3 for n in lengths) == 2 * len(lengths)
    assert beauty["test"].height == 2 * sum(n >= 2 for n in lengths) == 2 * len(lengths)
    for frame in beauty.values():
        assert frame["label"].to_list().count(1) * 2 == frame.height


def test_amazon_negatives_are_items_the_user_never_interacted_with(beauty, beauty_sequences) -> None:
    seen = {(user, item) for user, items in beauty_sequences.items() for item in items}
    catalogue = {item for items in beauty_sequences.values() for item in items}
    for frame in beauty.values():
        negatives = frame.filter(pl.col("label") == 0)
        pairs = list(zip(negatives["user"].to_list(), negatives["item"].to_list()))
        assert not any(pair in seen for pair in pairs)
        assert {item for _, item in pairs} <= catalogue


def test_amazon_every_sample_is_a_prefix_and_its_next_item(beauty, beauty_sequences, beauty_first_attribute) -> None:
    """Every row of every split against the raw sequence: target = item at `position` (positives),
    history = the last max_len items before it, attributes aligned; train rows stop before the
    valid and test positions, so no train history holds a valid or test interaction."""
    max_len = AMAZON["max_len"]
    for split, frame in beauty.items():
        rows = frame.select("label", "user", "item", "item_attr", "hist_item", "hist_attr", "position").rows()
        for label, user, item, item_attr, hist_item, hist_attr, position in rows:
            sequence = beauty_sequences[user]
            n = len(sequence)
            expected_position = {"train": None, "valid": n - 2, "test": n - 1}[split]
            if expected_position is None:
                assert 1 <= position <= n - 3
            else:
                assert position == expected_position
            assert hist_item == sequence[:position][-max_len:]
            assert hist_attr == [beauty_first_attribute[i] for i in hist_item]
            assert item_attr == beauty_first_attribute[item]
            if label == 1:
                assert item == sequence[position]


def test_amazon_long_histories_keep_the_most_recent_items(beauty, beauty_sequences) -> None:
    user, sequence = max(beauty_sequences.items(), key=lambda kv: len(kv[1]))
    assert len(sequence) > AMAZON["max_len"] + 2  # the longest Beauty user (204) is truncated in test
    test_rows = beauty["test"].filter(pl.col("user") == user)
    assert test_rows["hist_item"].to_list() == [sequence[-1 - AMAZON["max_len"] : -1]] * 2


def test_amazon_writes_are_deterministic_and_seeded(beauty, real_file, tmp_path: Path) -> None:
    data_root = real_file("s3rec_seqrec/Beauty.txt").parents[1]
    write_recipe(AMAZON, data_root, tmp_path)
    for split, frame in beauty.items():
        assert pl.read_parquet(tmp_path / f"{split}.parquet").equals(frame)
    reseeded = build_recipe({**AMAZON, "seed": 7}, data_root)["train"]
    original = beauty["train"]
    assert reseeded.filter(pl.col("label") == 1).equals(original.filter(pl.col("label") == 1))
    changed = (reseeded.filter(pl.col("label") == 0)["item"] != original.filter(pl.col("label") == 0)["item"]).mean()
    assert changed > 0.99  # almost every negative is redrawn


def test_amazon_config_prepares_padded_sequences_once(real_file, tmp_path: Path) -> None:
    from recsys.config import compose_train_config
    from recsys.data import prepare_dataset

    data_root = real_file("s3rec_seqrec/Beauty.txt").parents[1]
    cfg = compose_train_config(["model=deepfm", "data=amazon_beauty_din", f"data.root={data_root}"])
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    prepared = prepare_dataset(data_cfg, tmp_path)
    (raw_dir,) = (tmp_path / "raw").iterdir()
    assert raw_dir.name.startswith("amazon_Beauty_din-")
    written_files = sorted(p.name for p in raw_dir.iterdir())
    assert written_files == ["recipe.json", "test.parquet", "train.parquet", "valid.parquet"]
    written = (raw_dir / "train.parquet").stat().st_mtime_ns
    assert prepare_dataset(data_cfg, tmp_path).directory == prepared.directory
    assert (raw_dir / "train.parquet").stat().st_mtime_ns == written  # reused, not rewritten

    raw = pl.read_parquet(raw_dir / "valid.parquet")
    out = pl.read_parquet(prepared.split_path("valid"))
    assert out.schema["hist_item"] == pl.Array(pl.Int64, 100) == out.schema["hist_attr"]
    for raw_history, ids, attr_ids in zip(raw["hist_item"].to_list()[:200], out["hist_item"].to_list(),
                                          out["hist_attr"].to_list()):
        kept = min(len(raw_history), 100)
        assert ids[: 100 - kept] == [0] * (100 - kept) and 0 not in ids[100 - kept :]  # left-padded
        assert attr_ids[: 100 - kept] == [0] * (100 - kept) and 0 not in attr_ids[100 - kept :]
    schema = prepared.schema()
    assert schema["hist_item"].vocab_key == schema["item"].vocab_key
    assert schema["hist_attr"].vocab_key == schema["item_attr"].vocab_key


def test_other_amazon_categories_take_one_config_value() -> None:
    from recsys.config import compose_train_config

    cfg = compose_train_config(["data=amazon_beauty_din", "data.recipe.dataset=Sports_and_Outdoors"])
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    assert data_cfg["name"] == "amazon_Sports_and_Outdoors_din"
    with pytest.raises(FileNotFoundError, match="Sports_and_Outdoors.txt"):
        recipe_sources(data_cfg["recipe"], "/nonexistent")


# ------------------------------------------------------------------------------------------- errors
def test_a_missing_data_dir_or_source_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="RECSYS_DATA_DIR, which is not set"):
        recipe_sources(AMAZON, None)
    with pytest.raises(FileNotFoundError, match=r"s3rec_seqrec/Beauty\.txt"):
        recipe_sources(AMAZON, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"movielens_100k/u\.item"):
        recipe_sources(ML100K, tmp_path)


def test_unknown_recipes_and_settings_are_named() -> None:
    with pytest.raises(FeatureError, match="unknown recipe 'nope'"):
        recipe_sources({"name": "nope"}, "/")
    with pytest.raises(FeatureError, match="recipe 'ml100k_long' takes the settings"):
        recipe_sources({**ML100K, "seed": 1}, "/")


# ------------------------------------------------------------------------------------------- ml100k_long
@pytest.fixture(scope="module")
def ml100k_ratings(real_file) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) of every line of u.data."""
    lines = real_file("movielens_100k/u.data").read_text().splitlines()
    return [tuple(int(v) for v in line.split("\t")) for line in lines]


@pytest.fixture(scope="module")
def ml100k(real_file) -> dict[str, pl.DataFrame]:
    for name in ("u.data", "u.user", "u.item"):
        real_file(f"movielens_100k/{name}")
    return build_recipe(ML100K, real_file("movielens_100k/u.data").parents[1])


def _global_key(user: int, item: int, timestamp: int) -> tuple[int, int, int]:
    return (timestamp, user, item)


def test_ml100k_global_time_split_80_10_10(ml100k, ml100k_ratings) -> None:
    assert {s: f.height for s, f in ml100k.items()} == {"train": 80_000, "valid": 10_000, "test": 10_000}
    ordered = sorted(_global_key(u, i, t) for u, i, _, t in ml100k_ratings)
    for split, (lo, hi) in {"train": (0, 80_000), "valid": (80_000, 90_000), "test": (90_000, 100_000)}.items():
        frame = ml100k[split]
        keys = sorted(zip(frame["timestamp"], frame["user"], frame["item"]))
        assert keys == ordered[lo:hi]
    rating = {(u, i): r for u, i, r, _ in ml100k_ratings}
    for frame in ml100k.values():
        labels = [int(rating[(u, i)] >= 4) for u, i in zip(frame["user"], frame["item"])]
        assert frame["label"].to_list() == labels


def test_ml100k_histories_are_the_earlier_ratings(ml100k, ml100k_ratings) -> None:
    by_user: dict[int, list[tuple[int, int, int]]] = {}
    for user, item, rating, timestamp in ml100k_ratings:
        by_user.setdefault(user, []).append((timestamp, item, rating))
    longest = sorted(by_user, key=lambda u: len(by_user[u]))[-3:]
    assert len(by_user[longest[-1]]) > ML100K["max_len"]  # truncation is exercised
    users = set(longest) | set(sorted(by_user)[::25])
    frame = pl.concat(ml100k.values()).filter(pl.col("user").is_in(list(users)))
    expected = {}
    for user in users:
        history = sorted(by_user[user])  # time order, ties broken by item id
        for p, (_, item, _) in enumerate(history):
            earlier = history[:p][-ML100K["max_len"]:]
            expected[(user, item)] = ([i for _, i, _ in earlier], [r for _, _, r in earlier])
    got = {(u, i): (h, r) for u, i, h, r in frame.select("user", "item", "hist_item", "hist_rating").rows()}
    assert got == expected


def test_ml100k_train_histories_hold_only_training_ratings(ml100k, ml100k_ratings) -> None:
    """Every rating in a train sample's history precedes the first validation rating in the global
    (timestamp, user, item) order, so no valid or test interaction leaks into training."""
    timestamp = {(u, i): t for u, i, _, t in ml100k_ratings}
    boundary = sorted(_global_key(u, i, t) for u, i, _, t in ml100k_ratings)[80_000]
    history_pairs = (
        ml100k["train"].select("user", "hist_item").explode("hist_item").drop_nulls().unique().rows()
    )
    assert history_pairs
    assert all(_global_key(u, i, timestamp[(u, i)]) < boundary for u, i in history_pairs)
    assert max(timestamp[pair] for pair in history_pairs) <= boundary[0]


def test_ml100k_side_features(ml100k, real_file) -> None:
    frame = pl.concat(ml100k.values())
    user_lines = real_file("movielens_100k/u.user").read_text().splitlines()
    users = {line.split("|")[0]: line.split("|") for line in user_lines}
    _, age, gender, occupation, zip_code = users["1"]
    row = frame.filter(pl.col("user") == 1).row(0, named=True)
    assert int(age) == 24 and row["age_group"] == 18
    assert (row["gender"], row["occupation"], row["zip3"]) == (gender, occupation, zip_code[:3])
    items = real_file("movielens_100k/u.item").read_bytes().decode("latin-1").splitlines()
    toy_story = items[0].split("|")
    assert toy_story[1] == "Toy Story (1995)"
    row = frame.filter(pl.col("item") == 1).row(0, named=True)
    assert row["genre"] == toy_story[5:].index("1") and row["release_year"] == 1995
    assert frame.filter(pl.col("release_year").is_null())["item"].unique().to_list() == [267]  # no release date


def test_ml100k_gauc_groups_keep_users_unseen_in_training_apart(ml100k) -> None:
    from recsys.config import compose_train_config
    from recsys.features import FeaturePipeline

    fields = OmegaConf.to_container(compose_train_config(["data=ml100k_long"]).data.fields, resolve=True)
    pipeline = FeaturePipeline([f for f in fields if f["kind"] in ("label", "group")]).fit(ml100k["train"])
    for split in ("valid", "test"):
        raw = ml100k[split]
        assert not set(raw["user"]) <= set(ml100k["train"]["user"])  # the global time split brings new users
        groups = pipeline.transform(raw).collect()["group_user"]
        assert raw.select("user").with_columns(groups).n_unique() == raw["user"].n_unique() == groups.n_unique()


# ------------------------------------------------------------------------------------------- s3rec_next_item
# The 5-core sets MQSA-TED ships: (users, items, interactions), as the issue and the official code give them.
S3REC_COUNTS = {"Beauty": (22_363, 12_101, 198_502), "Sports_and_Outdoors": (35_598, 18_357, 296_337),
                "Toys_and_Games": (19_412, 11_924, 167_597), "Yelp": (30_431, 20_033, 316_354)}


@pytest.mark.parametrize("dataset", sorted(S3REC_COUNTS))
def test_next_item_split_reproduces_the_official_counts_without_leakage(dataset: str, real_file) -> None:
    path = real_file(f"s3rec_seqrec/{dataset}.txt")
    raw = {int(line.split()[0]): [int(i) for i in line.split()[1:]] for line in path.read_text().splitlines()}
    splits = build_recipe({"name": "s3rec_next_item", "dataset": dataset}, path.parents[1])
    test = splits["test"]
    users, items = test.height, len(set(test["history"].explode().to_list()) | set(test["target"].to_list()))
    interactions = int(test["history"].list.len().sum()) + test.height
    assert (users, items, interactions) == S3REC_COUNTS[dataset]
    # Leave-one-out by position, checked against a plain reading of the file: train is all but the last two
    # interactions, validation predicts the second to last from it, test the last from everything before.
    rows = {s: dict(zip(f["user"].to_list(), zip(f["history"].to_list(), f["target"].to_list()))) for s, f in splits.items()}
    for user, seq in raw.items():
        assert rows["train"][user] == (seq[:-2], None)
        assert rows["valid"][user] == (seq[:-2], seq[-2])
        assert rows["test"][user] == (seq[:-1], seq[-1])
    if dataset != "Yelp":  # the Amazon sets have no repeated interactions: a target never is in the training input
        assert not any(seq[-1] in seq[:-2] or seq[-2] in seq[:-2] for seq in raw.values())
# ------------------------------------------------------------------------------------------- movielens_1m_ctr
ML1M = {"name": "movielens_1m_ctr", "seed": 2021}


@pytest.fixture(scope="module")
def ml1m(real_file) -> dict[str, pl.DataFrame]:
    return build_recipe(ML1M, real_file("movielens_1m/ratings_merged.csv.gz").parents[1])


def test_ml1m_is_every_rating_split_8_1_1_with_its_label(ml1m, real_file) -> None:
    import csv
    import gzip

    with gzip.open(real_file("movielens_1m/ratings_merged.csv.gz"), "rt") as handle:
        ratings = {(int(r["user_id"]), int(r["movie_id"])): int(r["rating"]) for r in csv.DictReader(handle)}
    assert len(ratings) == 1_000_209
    assert [ml1m[s].height for s in ("train", "valid", "test")] == [800_167, 100_021, 100_021]
    seen = {}
    for split, frame in ml1m.items():
        for user, movie, label in zip(frame["user"].to_list(), frame["movie"].to_list(), frame["label"].to_list()):
            assert (user, movie) not in seen, f"{(user, movie)} is in {seen[(user, movie)]} and {split}"
            seen[(user, movie)] = split
            assert label == int(ratings[(user, movie)] >= 4)
    assert seen.keys() == ratings.keys()
    assert sum(frame["label"].sum() for frame in ml1m.values()) == 575_281  # the README's count of ratings >= 4


def test_ml1m_side_fields_come_from_users_and_movies(ml1m, real_file) -> None:
    users = {}
    for line in real_file("movielens_1m/users.dat").read_text().splitlines():
        user, gender, age, occupation, zip_code = line.split("::")
        users[int(user)] = (gender, age, occupation, zip_code)
    genres = {}
    for line in real_file("movielens_1m/movies.dat").read_bytes().decode("latin-1").splitlines():
        movie, _, listed = line.split("::")
        genres[int(movie)] = listed.split("|")[0]
    rows = ml1m["valid"].head(2000).to_dicts()
    for row in rows:
        assert (row["gender"], row["age"], row["occupation"], row["zip"]) == users[row["user"]]
        assert row["genre"] == genres[row["movie"]]
    assert ml1m["train"].columns == ["label", "user", "movie", "gender", "age", "occupation", "zip", "genre"]


def test_ml1m_split_is_seeded(ml1m, real_file) -> None:
    root = real_file("movielens_1m/ratings_merged.csv.gz").parents[1]
    again = build_recipe(ML1M, root)
    assert all(again[s].equals(ml1m[s]) for s in ml1m)
    other = build_recipe({**ML1M, "seed": 7}, root)
    assert not other["test"].equals(ml1m["test"]) and other["test"].height == ml1m["test"].height


def test_ml1m_names_a_missing_source_file(tmp_path: Path) -> None:
    (tmp_path / "movielens_1m").mkdir()
    (tmp_path / "movielens_1m" / "ratings_merged.csv.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"movielens_1m/users\.dat"):
        recipe_sources(ML1M, tmp_path)
    (tmp_path / "movielens_1m" / "users.dat").write_text("1::F::1::10::48067\n2::M::56\n")
    from recsys.features.recipes import read_double_colon

    with pytest.raises(FeatureError, match=r"users\.dat: line 2 has not 5 fields"):
        read_double_colon(tmp_path / "movielens_1m" / "users.dat", ["user", "gender", "age", "occupation", "zip"])
