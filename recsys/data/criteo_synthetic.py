"""A Criteo-shaped synthetic CTR dataset for benchmarks at scale: 13 numeric fields (I1..I13, long-tailed
counts, some missing) and 26 categorical fields (C1..C26) whose cardinalities are those of the Criteo
Kaggle display-advertising log (the largest in the millions), with Zipf-distributed ids and some missing
values. Labels come from a planted logistic model (first-order effects of every field, factor
interactions between chosen field pairs, effects of the log counts), so a model's AUC means something;
`planted_logit` is written beside the label so the best attainable AUC can be read off the data.

Written in parts of `part_rows` rows (`<split>.parquet/part-00000.parquet`, ...: a folder that Polars,
Spark and DuckDB read as one table), each drawn from its own
seed (seed, split, part): memory is one part at a time, never the set, and a set of n_train rows is the
first n_train / part_rows parts of any larger set with the same seed and part size. Each part appears
whole or not at all (written beside and renamed), so an interrupted run resumes where it stopped.

Per-id effects are not tables (the largest field would need 10M entries per parameter): they are hashes
of (field, id) turned into numbers, so any part can be drawn without the others.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

# Bump when what the generator writes changes, so cached copies are rewritten.
CRITEO_GENERATOR_VERSION = 1
NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
# Distinct values per categorical field in the Criteo Kaggle training log (45.8M rows).
CARDINALITY = dict(zip(CATEGORICAL, (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992, 5461306, 10,
    5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)))
ZIPF_EXPONENT = 1.1
# Share of missing values per field (Criteo leaves many numeric and some categorical fields empty).
MISSING_NUMERIC = dict(zip(NUMERIC, (0.45, 0.0, 0.2, 0.2, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.2)))
MISSING_CATEGORICAL = {"C19": 0.44, "C20": 0.44, "C22": 0.76, "C25": 0.44, "C26": 0.44, "C3": 0.03, "C12": 0.03}
# Planted pairwise interactions (fields of moderate cardinality, so a model can learn them from data).
PLANTED_PAIRS = (("C1", "C2"), ("C5", "C14"), ("C7", "C13"), ("C6", "C17"), ("C10", "C24"))
FACTOR_DIM = 4
SPLITS = ("train", "valid", "test")
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed uint64 for every uint64 (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash_uniform(field_index: int, salt: int, ids: np.ndarray) -> np.ndarray:
    """A number in [-1, 1) for each id, fixed by (field, salt, id): the planted effect of that id."""
    key = ids.astype(np.uint64) * np.uint64(0x100000001B3) + np.uint64((field_index * 131 + salt) * 0x51ED27)
    return (_splitmix(key) >> np.uint64(11)).astype(np.float64) * (2.0 / 2**53) - 1.0


def _zipf_ranks(rng: np.random.Generator, cardinality: int, n: int) -> np.ndarray:
    """Ranks 0..cardinality-1 with P(rank k) roughly proportional to (k + 1) ** -ZIPF_EXPONENT: the inverse
    CDF of the continuous power law on [1, cardinality + 1), floored."""
    a = 1.0 - ZIPF_EXPONENT
    top = (cardinality + 1.0) ** a
    x = (1.0 + rng.random(n) * (top - 1.0)) ** (1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, cardinality - 1)


def _scramble(field_index: int, ranks: np.ndarray, cardinality: int) -> np.ndarray:
    """Which raw value holds each frequency rank: a fixed bijection of 0..cardinality-1 (an affine map
    modulo the cardinality), so value order says nothing about frequency."""
    multiplier = 2_654_435_761 + 2 * field_index
    while math.gcd(multiplier, cardinality) != 1:
        multiplier += 1
    return (ranks * (multiplier % cardinality) + 7919 * field_index) % cardinality


def criteo_part(seed: int, split: str, part: int, rows: int) -> pl.DataFrame:
    """One part of a split: `rows` rows drawn from seed (seed, split, part) alone."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], part])
    columns: dict[str, np.ndarray] = {}
    logit = np.full(rows, -1.9)
    categorical: dict[str, np.ndarray] = {}
    for i, name in enumerate(CATEGORICAL):
        card = CARDINALITY[name]
        ids = _scramble(i, _zipf_ranks(rng, card, rows), card)
        categorical[name] = ids
        # Every value has an effect; only the frequent ones are seen often enough to be learned, which keeps
        # a trained model's AUC below the planted model's, as on real logs.
        logit += 0.6 * _hash_uniform(i, 0, ids)
    for a, b in PLANTED_PAIRS:
        ia, ib = CATEGORICAL.index(a), CATEGORICAL.index(b)
        va = np.stack([_hash_uniform(ia, 1 + k, categorical[a]) for k in range(FACTOR_DIM)], axis=1)
        vb = np.stack([_hash_uniform(ib, 1 + k, categorical[b]) for k in range(FACTOR_DIM)], axis=1)
        logit += 1.2 * (va * vb).sum(axis=1)
    numeric: dict[str, np.ndarray] = {}
    for j, name in enumerate(NUMERIC):
        # Long-tailed counts, as Criteo's integer fields are.
        values = np.floor(rng.lognormal(mean=0.5 + 0.25 * j, sigma=1.2, size=rows)).astype(np.int64)
        numeric[name] = values
        if j % 3 == 0:
            logit += (0.25 if j % 2 else -0.25) * (np.log1p(values) - (0.5 + 0.25 * j))
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    columns["label"] = label
    for name in NUMERIC:
        columns[name] = numeric[name]
    for name in CATEGORICAL:
        columns[name] = categorical[name]
    frame = pl.DataFrame(
        {**columns, "planted_logit": logit.astype(np.float32)},
        schema={"label": pl.Int8, **{n: pl.Int32 for n in NUMERIC}, **{n: pl.Int32 for n in CATEGORICAL},
                "planted_logit": pl.Float32},
    )
    # Missing values, drawn after the label (missingness here carries no signal).
    masks = {n: rng.random(rows) < p for n, p in {**MISSING_NUMERIC, **MISSING_CATEGORICAL}.items() if p > 0}
    return frame.with_columns(
        [pl.when(pl.Series(mask)).then(None).otherwise(pl.col(n)).alias(n) for n, mask in masks.items()]
    )


def write_criteo_synthetic(directory: str | Path, n_train: int = 1_000_000, n_valid: int = 100_000, n_test: int = 100_000,
                           seed: int = 2024, part_rows: int = 1_000_000, progress: bool = True) -> Path:
    """Write `<directory>/<split>.parquet/part-NNNNN.parquet` for train, valid and test. Does nothing for a
    split already complete with the same settings; finishes a split an interrupted run left part-way."""
    from tqdm.auto import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in zip(SPLITS, (n_train, n_valid, n_test)):
        target = directory / f"{split}.parquet"
        settings = {"generator": CRITEO_GENERATOR_VERSION, "rows": n, "seed": seed, "part_rows": part_rows}
        # Markers and temporary files live beside the split's folder: a reader scans every file inside it.
        marker = directory / f"{split}.done.json"
        started = directory / f".{split}.started.json"
        if marker.exists() and json.loads(marker.read_text()) == settings and target.is_dir():
            continue
        marker.unlink(missing_ok=True)
        if target.exists() and (not started.exists() or json.loads(started.read_text()) != settings):
            for stale in target.iterdir():
                stale.unlink()
        target.mkdir(exist_ok=True)
        started.write_text(json.dumps(settings))
        n_parts = -(-n // part_rows)
        for part in tqdm(range(n_parts), desc=f"criteo-shaped {split}", unit="part", disable=not progress):
            path = target / f"part-{part:05d}.parquet"
            if path.exists():
                continue  # written whole by an earlier, interrupted run
            rows = min(part_rows, n - part * part_rows)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{split}-part-", suffix=".tmp")
            os.close(fd)
            os.chmod(tmp, 0o644)
            try:
                criteo_part(seed, split, part, rows).write_parquet(tmp, statistics=True)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        marker.write_text(json.dumps(settings))
    return directory


def criteo_fields(min_count: int = 10, numeric_norm: str = "log") -> list[dict]:
    """The feature config for these files: every C field categorical (values seen fewer than `min_count`
    times become out-of-vocabulary, as BARS's Criteo_x1 does with 10), every I field numeric."""
    return ([{"name": "label", "kind": "label"}]
            + [{"name": n, "kind": "numeric", "norm": numeric_norm} for n in NUMERIC]
            + [{"name": n, "kind": "categorical", "min_count": min_count} for n in CATEGORICAL])
