"""A synthetic CTR dataset with planted interactions, for a first run without real data.

Labels come from a known logistic model: first-order effects plus pairwise factor interactions between
chosen field pairs (user x item, item x context). A model that learns interactions (FM, DeepFM, ...)
therefore beats LR by a clear margin, which makes the first leaderboard meaningful. Each row also has a
behaviour history (`hist_item`, items joined by "^", most recent last) whose items lean towards the
user's taste, and the label rewards a target close to the history, so target attention (DIN, SDIM,
DARE) has something to find. Ids are Zipf-distributed, as real ids are. The files are labelled
synthetic in their folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recsys.features.atomic import atomic_file, write_json_atomic

FIELDS = ("user", "item", "context", "device", "category")
CARDINALITY = {"user": 800, "item": 1500, "context": 24, "device": 6, "category": 40}
PLANTED_PAIRS = (("user", "item"), ("item", "context"), ("user", "category"))
MAX_HISTORY = 20


# Bump when what the generator writes changes (v2: the behaviour history), so cached copies are rewritten.
GENERATOR_VERSION = 2


def write_synthetic_ctr(directory: str | Path, n_train: int = 60_000, n_valid: int = 10_000, n_test: int = 10_000,
                        factor_dim: int = 4, seed: int = 2021) -> Path:
    """Write train/valid/test CSVs (label, the categorical FIELDS, one numeric `price`) under `directory`.
    Does nothing if they are already there for the same settings."""
    directory = Path(directory)
    settings = {"generator": GENERATOR_VERSION, "n_train": n_train, "n_valid": n_valid, "n_test": n_test, "factor_dim": factor_dim, "seed": seed}
    marker = directory / "SYNTHETIC.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return directory
    rng = np.random.default_rng(seed)
    n = n_train + n_valid + n_test
    ids = {f: np.minimum(rng.zipf(1.3, size=n), CARDINALITY[f]) - 1 for f in FIELDS}
    # Shuffle which raw value is frequent, so id order carries no signal.
    ids = {f: rng.permutation(CARDINALITY[f])[v] for f, v in ids.items()}
    first = {f: rng.normal(0, 0.5, CARDINALITY[f]) for f in FIELDS}
    factors = {f: rng.normal(0, 1.0, (CARDINALITY[f], factor_dim)) for f in FIELDS}
    price = rng.lognormal(3.0, 1.0, size=n)
    logit = -1.0 + sum(first[f][ids[f]] for f in FIELDS) - 0.3 * np.log1p(price)
    for a, b in PLANTED_PAIRS:
        logit += 0.9 * (factors[a][ids[a]] * factors[b][ids[b]]).sum(axis=1)
    history, history_len = _histories(rng, ids["user"], factors, n)
    # The target's affinity to the history's most similar items (a max, so attention beats mean pooling).
    affinity = np.einsum("nld,nd->nl", factors["item"][history], factors["item"][ids["item"]])
    affinity = np.where(np.arange(MAX_HISTORY) < history_len[:, None], affinity, -np.inf).max(axis=1)
    logit += np.where(history_len > 0, 0.6 * np.clip(affinity, -4, 4), 0.0)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    frame = pl.DataFrame({"label": label, **{f: ids[f] for f in FIELDS}, "price": np.round(price, 2)})
    tokens = pl.Series(history.astype(str).tolist()).to_frame("h").select(pl.col("h").list.head(pl.lit(history_len)))
    frame = frame.with_columns(hist_item=tokens["h"].list.join("^"))
    directory.mkdir(parents=True, exist_ok=True)
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}
    for split, (lo, hi) in bounds.items():
        with atomic_file(directory / f"{split}.csv") as tmp:
            frame.slice(lo, hi - lo).write_csv(tmp)
    write_json_atomic(marker, settings)
    return directory


def _histories(rng: np.random.Generator, users: np.ndarray, factors: dict[str, np.ndarray], n: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """[n, MAX_HISTORY] item ids (valid up to each row's length) drawn from items the user's factors favour."""
    n_items = CARDINALITY["item"]
    # Each user's taste: a softmax over items of the user-item factor affinity, sampled by inverse CDF.
    taste = factors["user"] @ factors["item"].T
    probs = np.exp(taste - taste.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    # One sorted array of every user's CDF shifted by the user's index: a single searchsorted samples all rows.
    shifted = (cdf + np.arange(len(cdf))[:, None]).ravel()
    draws = rng.random((n, MAX_HISTORY)) + users[:, None]
    history = np.searchsorted(shifted, draws) - users[:, None] * n_items
    history = np.clip(history, 0, n_items - 1)
    return history, rng.integers(0, MAX_HISTORY + 1, size=n)


def write_synthetic_sequences(directory: str | Path, n_users: int = 3000, n_items: int = 400, min_length: int = 5,
                              max_length: int = 30, follow: float = 0.7, seed: int = 2021) -> Path:
    """Write train/valid/test Parquet splits of user item sequences, leave-one-out per user (the same split
    as the real next-item data, `recsys.features.recipes.leave_one_out`). Each item has three preferred
    successors: the next item is one of them with probability `follow` (a planted transition a sequence
    model can learn), else a Zipf-popular item. Does nothing if the files are already there for the same
    settings."""
    from recsys.features.recipes import leave_one_out

    directory = Path(directory)
    settings = {"generator": f"next_item-{GENERATOR_VERSION}", "n_users": n_users, "n_items": n_items,
                "min_length": min_length, "max_length": max_length, "follow": follow, "seed": seed}
    marker = directory / "SYNTHETIC.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return directory
    rng = np.random.default_rng(seed)
    successors = rng.integers(1, n_items + 1, size=(n_items + 1, 3))
    popular = np.minimum(rng.zipf(1.5, size=(n_users, max_length)), n_items)
    lengths = rng.integers(min_length, max_length + 1, size=n_users)
    items = np.empty((n_users, max_length), dtype=np.int64)
    items[:, 0] = popular[:, 0]
    follows = rng.random((n_users, max_length)) < follow
    picks = rng.integers(0, 3, size=(n_users, max_length))
    for t in range(1, max_length):  # a loop over positions (the chain is sequential), vectorised over users
        items[:, t] = np.where(follows[:, t], successors[items[:, t - 1], picks[:, t]], popular[:, t])
    users = pl.DataFrame({"user": np.arange(1, n_users + 1), "items": items.tolist(), "length": lengths}).select(
        "user", pl.col("items").list.head(pl.col("length"))
    )
    directory.mkdir(parents=True, exist_ok=True)
    for split, frame in leave_one_out(users, "synthetic sequences").items():
        with atomic_file(directory / f"{split}.parquet") as tmp:
            frame.write_parquet(tmp)
    write_json_atomic(marker, settings)
    return directory
