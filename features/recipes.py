"""Data recipes: raw public files -> raw train/valid/test frames of behaviour-sequence CTR samples.

A recipe turns source files under RECSYS_DATA_DIR into plain frames (integer and string columns, list
columns for histories) that the FeaturePipeline then fits and transforms like any other dataset. A
data config names its recipe in a `recipe:` block; `recsys.data.prepare_dataset` writes the frames
once per (settings, source files) into the cache. Everything here is vectorised and deterministic:
the same settings and files give the same frames, row for row.

- `amazon_din`: DIN's Amazon protocol (Zhou et al., KDD 2018) on the S3-Rec Amazon sequences.
- `ml100k_long`: every MovieLens-100K rating with the user's long rating history, split by global time.
- `s3rec_next_item`: the S3-Rec sequences for next-item prediction, leave-one-out per user (MQSA-TED's
  protocol).
- `movielens_1m_ctr`: every MovieLens-1M rating as a CTR sample (label = rating >= 4) with user and movie
  attributes, split 8/1/1 at random with a seed.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from recsys.features.errors import FeatureError

SPLITS = ("train", "valid", "test")
# Bump when a recipe changes what it writes, so cached raw files are rebuilt.
RECIPES_VERSION = 1
# The raw attribute of an item that has none. It is a token of its own (not null) so that attribute
# histories stay aligned with item histories: the pipeline drops null sequence elements.
NO_ATTRIBUTE = 0
# MovieLens-1M's age groups, by their first age; 0 stands for "under 18".
AGE_GROUP_STARTS = np.array([0, 18, 25, 35, 45, 50, 56])
ML100K_GENRES = 19
# The global time split of ml100k_long: the first 80% of ratings train, the next 10% validate.
ML100K_TRAIN_FRACTION, ML100K_VALID_FRACTION = 0.8, 0.1
# The random split of movielens_1m_ctr: 80% train, 10% validation, 10% test.
ML1M_TRAIN_FRACTION, ML1M_VALID_FRACTION = 0.8, 0.1


class Recipe(NamedTuple):
    sources: Callable[..., dict[str, str]]  # settings -> {role: path relative to RECSYS_DATA_DIR}
    # (source paths, **settings) -> one frame per split; its keywords are the settings the recipe takes.
    build: Callable[..., dict[str, pl.DataFrame]]


# ---------------------------------------------------------------------------------------- shared steps
def with_histories(events: pl.DataFrame, *, by: str, position: str, columns: Mapping[str, str],
                   max_len: int) -> pl.DataFrame:
    """`events` plus, for each source -> name in `columns`, a list of the values of the same `by` at the
    `max_len` positions before this one (most recent last; empty at position 0)."""
    ordered = events.sort(by, position)
    windows = ordered.rolling(index_column=position, period=f"{max_len}i", closed="left", group_by=by).agg(
        [pl.col(source).alias(name) for source, name in columns.items()]
    )
    return ordered.join(windows, on=[by, position], how="left")


def sample_unseen_items(users: np.ndarray, interactions: pl.DataFrame, universe: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `users`, uniform over `universe` among the items that user never interacted
    with (`interactions` holds every (user, item) pair). Rejection sampling: redraw the rejected entries
    until none is left, each round vectorised."""
    per_user = interactions.group_by("user").agg(pl.col("item").n_unique().alias("n"))
    if per_user["n"].max() >= len(universe):
        raise FeatureError("a user interacted with every item, so there is no negative to sample for them")
    stride = int(universe.max()) + 1  # (user, item) -> one int64 key
    seen = np.unique(interactions["user"].to_numpy() * stride + interactions["item"].to_numpy())
    items = universe[rng.integers(0, len(universe), size=len(users))]
    rejected = np.isin(users * stride + items, seen)
    while rejected.any():
        items[rejected] = universe[rng.integers(0, len(universe), size=int(rejected.sum()))]
        rejected[rejected] = np.isin(users[rejected] * stride + items[rejected], seen)
    return items


# ---------------------------------------------------------------------------------------- amazon_din
def amazon_din_sources(*, dataset: str, **_: Any) -> dict[str, str]:
    return {
        "sequences": f"s3rec_seqrec/{dataset}.txt",
        "attributes": f"s3rec_seqrec/{dataset}_item2attributes.json",
    }


def read_s3rec_sequences(path: Path) -> pl.DataFrame:
    """`user item item ...` lines (items in time order) -> one row per (user, position, item)."""
    lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                        schema_overrides={"line": pl.String})
    ids = pl.col("line").str.strip_chars().str.split(" ").cast(pl.List(pl.Int64))
    return (
        lines.select(ids.list.first().alias("user"), ids.list.slice(1).alias("item"))
        .with_columns(pl.int_ranges(pl.col("item").list.len()).alias("position"))
        .explode("item", "position")
        .select("user", pl.col("position").cast(pl.Int64), "item")
    )


def read_first_attributes(path: Path) -> pl.DataFrame:
    """`{"item": [attr, ...]}` -> (item, item_attr): each item's first listed attribute."""
    attributes = json.loads(Path(path).read_text())
    frame = pl.DataFrame({"item": list(attributes), "attrs": list(attributes.values())},
                         schema={"item": pl.String, "attrs": pl.List(pl.Int64)})
    return frame.select(
        pl.col("item").cast(pl.Int64),
        pl.col("attrs").list.first().fill_null(NO_ATTRIBUTE).alias("item_attr"),
    )


def build_amazon_din(sources: Mapping[str, Path], *, dataset: str, seed: int, max_len: int) -> dict[str, pl.DataFrame]:
    """For each user sequence i_0..i_{n-1} and each t >= 1: history i_0..i_{t-1} (the last `max_len`),
    target i_t with label 1, and the same history with an item the user never interacted with, label 0.
    Position n-1 is test, n-2 validation, the rest train. Item attributes ride along as `item_attr`
    (the target's) and `hist_attr` (aligned with `hist_item`). `dataset` only picks the source files
    (see `amazon_din_sources`)."""
    events = read_s3rec_sequences(sources["sequences"])
    attributes = read_first_attributes(sources["attributes"])
    events = events.join(attributes, on="item", how="left").with_columns(pl.col("item_attr").fill_null(NO_ATTRIBUTE))
    samples = (
        with_histories(events, by="user", position="position", columns={"item": "hist_item", "item_attr": "hist_attr"},
                       max_len=max_len)
        .with_columns(pl.len().over("user").alias("n"))
        .filter(pl.col("position") >= 1)
        .with_columns(
            pl.when(pl.col("position") == pl.col("n") - 1).then(pl.lit("test"))
            .when(pl.col("position") == pl.col("n") - 2).then(pl.lit("valid"))
            .otherwise(pl.lit("train")).alias("split")
        )
        .sort("user", "position")  # fixes the order the negatives are drawn in
    )
    universe = np.sort(events["item"].unique().to_numpy())
    negative_items = sample_unseen_items(samples["user"].to_numpy(), events.select("user", "item"), universe,
                                         np.random.default_rng(seed))
    negatives = (
        samples.select("user", "position", "split", "hist_item", "hist_attr")
        .with_columns(pl.Series("item", negative_items))
        .join(attributes, on="item", how="left")
        .with_columns(pl.col("item_attr").fill_null(NO_ATTRIBUTE))
    )
    columns = ["label", "user", "item", "item_attr", "hist_item", "hist_attr", "position", "split"]
    frame = pl.concat([
        samples.with_columns(pl.lit(1, pl.Int8).alias("label")).select(columns),
        negatives.with_columns(pl.lit(0, pl.Int8).alias("label")).select(columns),
    ]).sort(["user", "position", "label"], descending=[False, False, True])
    return {split: frame.filter(pl.col("split") == split).drop("split") for split in SPLITS}


# ---------------------------------------------------------------------------------------- ml100k_long
def ml100k_long_sources(**_: Any) -> dict[str, str]:
    return {"ratings": "movielens_100k/u.data", "users": "movielens_100k/u.user", "items": "movielens_100k/u.item"}


def read_ml100k_users(path: Path) -> pl.DataFrame:
    """u.user -> (user, age_group, gender, occupation, zip3)."""
    users = pl.read_csv(path, separator="|", has_header=False, quote_char=None,
                        new_columns=["user", "age", "gender", "occupation", "zip"],
                        schema_overrides={"user": pl.Int64, "age": pl.Int64, "zip": pl.String})
    age_group = AGE_GROUP_STARTS[np.searchsorted(AGE_GROUP_STARTS, users["age"].to_numpy(), side="right") - 1]
    return users.select(
        "user",
        pl.Series("age_group", age_group, dtype=pl.Int64),
        "gender",
        "occupation",
        pl.col("zip").str.slice(0, 3).alias("zip3"),
    )


def read_ml100k_items(path: Path) -> pl.DataFrame:
    """u.item (Latin-1) -> (item, genre, release_year): the first flagged of the 19 genres (0 is
    "unknown", also what an item with no flag gets) and the year of the release date (null if none)."""
    genres = [f"genre_{g}" for g in range(ML100K_GENRES)]
    text = Path(path).read_bytes().decode("latin-1").encode()
    items = pl.read_csv(text, separator="|", has_header=False, quote_char=None,
                        new_columns=["item", "title", "release_date", "video_date", "url", *genres],
                        schema_overrides={"item": pl.Int64, "release_date": pl.String, "video_date": pl.String})
    return items.select(
        "item",
        pl.concat_list(genres).list.arg_max().cast(pl.Int64).alias("genre"),
        pl.col("release_date").str.to_date("%d-%b-%Y", strict=False).dt.year().cast(pl.Int64).alias("release_year"),
    )


def build_ml100k_long(sources: Mapping[str, Path], *, max_len: int) -> dict[str, pl.DataFrame]:
    """One sample per rating, label = rating >= 4. History: the user's earlier ratings in the order
    (timestamp, item), the last `max_len` items (`hist_item`) and their ratings (`hist_rating`).
    Split by global time: all ratings sorted by (timestamp, user, item), the first 80% train, the next
    10% validation, the rest test. Within one user the two orders agree, so every rating in a train
    sample's history is itself a train rating."""
    ratings = pl.read_csv(sources["ratings"], separator="\t", has_header=False,
                          new_columns=["user", "item", "rating", "timestamp"],
                          schema_overrides={c: pl.Int64 for c in ("user", "item", "rating", "timestamp")})
    ratings = ratings.sort("user", "timestamp", "item").with_columns(
        pl.int_range(pl.len()).over("user").alias("position")
    )
    n = ratings.height
    train_end = round(n * ML100K_TRAIN_FRACTION)
    valid_end = round(n * (ML100K_TRAIN_FRACTION + ML100K_VALID_FRACTION))
    frame = (
        with_histories(ratings, by="user", position="position", columns={"item": "hist_item", "rating": "hist_rating"},
                       max_len=max_len)
        .sort("timestamp", "user", "item")
        .with_row_index("order")
        .with_columns(
            pl.when(pl.col("order") < train_end).then(pl.lit("train"))
            .when(pl.col("order") < valid_end).then(pl.lit("valid"))
            .otherwise(pl.lit("test")).alias("split"),
            (pl.col("rating") >= 4).cast(pl.Int8).alias("label"),
        )
        .join(read_ml100k_users(sources["users"]), on="user", how="left")
        .join(read_ml100k_items(sources["items"]), on="item", how="left")
        .sort("order")
        .select("label", "user", "item", "hist_item", "hist_rating", "age_group", "gender", "occupation", "zip3",
                "genre", "release_year", "timestamp", "split")
    )
    return {split: frame.filter(pl.col("split") == split).drop("split") for split in SPLITS}


# ---------------------------------------------------------------------------------------- s3rec_next_item
def s3rec_next_item_sources(*, dataset: str, **_: Any) -> dict[str, str]:
    return {"sequences": f"s3rec_seqrec/{dataset}.txt"}


def leave_one_out(users: pl.DataFrame, source: str) -> dict[str, pl.DataFrame]:
    """Leave-one-out per user, as S3-Rec and MQSA-TED split sequences: with a user's items i_1..i_n in
    time order (`users`: one row per user, `user` and the list `items`), train holds the history
    i_1..i_{n-2}; validation the same history with target i_{n-1}; test the history i_1..i_{n-1} with
    target i_n. One row per user in every split (`user`, `history` as a list, most recent last, and
    `target`, null in train: a next-item task trains on every position of the history). `source` names
    the data in errors."""
    short = users.filter(pl.col("items").list.len() < 3)
    if short.height:
        raise FeatureError(f"{source}: {short.height} users have fewer than 3 items (e.g. user {short['user'][0]}), "
                           "too few for a train, a validation and a test item")
    n = pl.col("items").list.len()
    train_history = pl.col("items").list.head(n - 2)
    return {
        "train": users.select("user", train_history.alias("history"), pl.lit(None, pl.Int64).alias("target")),
        "valid": users.select("user", train_history.alias("history"), pl.col("items").list.get(-2).alias("target")),
        "test": users.select("user", pl.col("items").list.head(n - 1).alias("history"),
                             pl.col("items").list.get(-1).alias("target")),
    }


def build_s3rec_next_item(sources: Mapping[str, Path], *, dataset: str) -> dict[str, pl.DataFrame]:
    """The S3-Rec sequences of `dataset`, split leave-one-out per user (`leave_one_out`). `dataset` only
    picks the source file (see `s3rec_next_item_sources`)."""
    events = read_s3rec_sequences(sources["sequences"])
    users = events.sort("user", "position").group_by("user", maintain_order=True).agg(pl.col("item").alias("items"))
    return leave_one_out(users, str(sources["sequences"]))
# ---------------------------------------------------------------------------------------- movielens_1m_ctr
def movielens_1m_ctr_sources(**_: Any) -> dict[str, str]:
    return {"ratings": "movielens_1m/ratings_merged.csv.gz", "users": "movielens_1m/users.dat",
            "movies": "movielens_1m/movies.dat"}


def read_double_colon(path: Path, columns: list[str], encoding: str = "utf-8") -> pl.DataFrame:
    """A MovieLens-1M `.dat` file (fields separated by "::", which no reader takes as a separator) as
    string columns; an error names the file and line of a row with the wrong number of fields."""
    lines = pl.Series("line", Path(path).read_bytes().decode(encoding).splitlines())
    lines = lines.filter(lines.str.strip_chars() != "")
    bad = (lines.str.count_matches("::", literal=True) != len(columns) - 1).arg_true()
    if len(bad):
        raise FeatureError(f"{path}: line {int(bad[0]) + 1} has not {len(columns)} fields separated by '::': {lines[int(bad[0])]!r}")
    return lines.str.split_exact("::", len(columns) - 1).struct.rename_fields(columns).struct.unnest()


def build_movielens_1m_ctr(sources: Mapping[str, Path], *, seed: int) -> dict[str, pl.DataFrame]:
    """One sample per rating: label = rating >= 4; user, movie, the user's gender, age group, occupation and
    zip code, and the movie's first listed genre (movies.dat lists them with '|'). Split at random with
    `seed`: a permutation of all ratings (in the file's order), the first 80% train, the next 10%
    validation, the rest test."""
    ratings = pl.read_csv(sources["ratings"], schema_overrides={"user_id": pl.Int64, "movie_id": pl.Int64,
                                                                 "rating": pl.Int64, "timestamp": pl.Int64})
    missing = [c for c in ("user_id", "movie_id", "rating") if c not in ratings.columns]
    if missing:
        raise FeatureError(f"{sources['ratings']}: columns {missing} are missing (it has {ratings.columns})")
    users = read_double_colon(sources["users"], ["user", "gender", "age", "occupation", "zip"]).with_columns(
        pl.col("user").cast(pl.Int64))
    # movies.dat is Latin-1 (README of the data folder).
    movies = read_double_colon(sources["movies"], ["movie", "title", "genres"], encoding="latin-1").select(
        pl.col("movie").cast(pl.Int64), pl.col("genres").str.split("|").list.first().alias("genre"))
    frame = (
        ratings.select(pl.col("user_id").alias("user"), pl.col("movie_id").alias("movie"),
                       (pl.col("rating") >= 4).cast(pl.Int8).alias("label"))
        .join(users, on="user", how="left", maintain_order="left")
        .join(movies, on="movie", how="left", maintain_order="left")
    )
    for column, source in (("gender", "users"), ("genre", "movies")):
        unknown = frame.filter(pl.col(column).is_null())
        if unknown.height:
            raise FeatureError(f"{sources[source]} has no entry for {unknown.height} rated ids, e.g. "
                               f"{unknown.row(0, named=True)}")
    order = np.random.default_rng(seed).permutation(frame.height)
    train_end = round(frame.height * ML1M_TRAIN_FRACTION)
    valid_end = round(frame.height * (ML1M_TRAIN_FRACTION + ML1M_VALID_FRACTION))
    frame = frame.select("label", "user", "movie", "gender", "age", "occupation", "zip", "genre")
    return {"train": frame[order[:train_end]], "valid": frame[order[train_end:valid_end]],
            "test": frame[order[valid_end:]]}


RECIPES: dict[str, Recipe] = {
    "amazon_din": Recipe(amazon_din_sources, build_amazon_din),
    "ml100k_long": Recipe(ml100k_long_sources, build_ml100k_long),
    "s3rec_next_item": Recipe(s3rec_next_item_sources, build_s3rec_next_item),
    "movielens_1m_ctr": Recipe(movielens_1m_ctr_sources, build_movielens_1m_ctr),
}


# ---------------------------------------------------------------------------------------- entry points
def _recipe(config: Mapping[str, Any]) -> tuple[str, Recipe, dict[str, Any]]:
    settings = dict(config)
    name = settings.pop("name", None)
    if name not in RECIPES:
        raise FeatureError(f"unknown recipe {name!r}; known recipes: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    expected = set(inspect.signature(recipe.build).parameters) - {"sources"}
    if set(settings) != expected:
        raise FeatureError(f"recipe {name!r} takes the settings {sorted(expected)}, got {sorted(settings)}")
    return name, recipe, settings


def recipe_sources(config: Mapping[str, Any], data_root: str | Path | None) -> dict[str, Path]:
    """The source files a recipe config reads, checked to exist, with an error that says how to fix it."""
    name, recipe, settings = _recipe(config)
    relative = recipe.sources(**settings)
    if data_root in (None, "", "None", "null"):
        raise FileNotFoundError(
            f"recipe {name!r} reads {sorted(relative.values())} from RECSYS_DATA_DIR, which is not set: point it "
            f"at the folder that holds them"
        )
    paths = {role: Path(str(data_root)) / rel for role, rel in relative.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"recipe {name!r}: missing source files {missing}; RECSYS_DATA_DIR ({data_root}) must hold "
            f"{sorted(relative.values())}"
        )
    return paths


def build_recipe(config: Mapping[str, Any], data_root: str | Path | None) -> dict[str, pl.DataFrame]:
    """The raw train/valid/test frames of a recipe config (`{name: ..., <settings>}`)."""
    _, recipe, settings = _recipe(config)
    return recipe.build(recipe_sources(config, data_root), **settings)


def write_recipe(config: Mapping[str, Any], data_root: str | Path | None, directory: str | Path) -> dict[str, int]:
    """Write `<split>.parquet` for each split into `directory` (which must exist); returns the row counts.
    The caller makes the folder atomic (see `recsys.data.prepare_dataset`)."""
    directory = Path(directory)
    frames = build_recipe(config, data_root)
    for split, frame in frames.items():
        frame.write_parquet(directory / f"{split}.parquet")
    return {split: frame.height for split, frame in frames.items()}
