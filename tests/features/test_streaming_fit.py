"""The fit and the transform at flat memory: the fit completes on a file larger than the memory the process
may allocate; the transform's plan runs on the streaming engine with no in-memory fallback; quantiles
above a row count come from a systematic sample (said in the schema); integer columns are counted on
their values and merged with the string tokens of a shared vocabulary."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from recsys.features import FeaturePipeline

ROWS = 8_000_000
LIMIT_MIB = 160

# Runs in a child. RLIMIT_DATA caps the memory the process allocates (heap and private anonymous maps,
# where Polars and its allocator put rows), not file maps: Polars maps a Parquet file to read it, which
# RLIMIT_AS would count in full though it is page cache the kernel can drop.
CHILD = """
import resource, sys
import polars as pl
from recsys.features import FeaturePipeline

fields = [{"name": "label", "kind": "label"}] + [{"name": f"c{i}", "kind": "categorical"} for i in range(8)] + [
    {"name": f"x{i}", "kind": "numeric", "fill": "median", "norm": "standard"} for i in range(3)] + [
    {"name": "xb", "kind": "numeric", "source": "x3", "buckets": 8}]
source, warm, step = sys.argv[1], sys.argv[2], sys.argv[3]
# Warm up every code path before the limit, so that what it bounds is the work on the large file.
FeaturePipeline(fields).fit(pl.scan_parquet(warm))
data = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData"))
limit = data + int(sys.argv[4]) * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
if step == "fit":
    pipeline = FeaturePipeline(fields).fit(pl.scan_parquet(source))
    print("vocab", {t: v.height for t, v in pipeline.vocabs.items()}, "bounds", len(pipeline.schema["xb"].stats["boundaries"]))
else:
    print("read", pl.read_parquet(source).shape)
"""


def _write_table(path, rows: int) -> None:  # noqa: ANN001
    """`rows` rows of a label, 8 integer categorical and 4 float columns, generated and written by a
    streaming query (the test process never holds them either), uncompressed."""
    i = pl.int_range(0, rows, dtype=pl.UInt64).alias("i")
    pl.LazyFrame().select(i).select(
        (pl.col("i").hash(1) % 2).cast(pl.Int8).alias("label"),
        *[(pl.col("i").hash(10 + k) % (20_000 if k < 2 else 500)).cast(pl.Int32).alias(f"c{k}") for k in range(8)],
        *[((pl.col("i").hash(20 + k) % 100_000).cast(pl.Float64) / 1000).alias(f"x{k}") for k in range(4)],
    ).sink_parquet(path, compression="uncompressed", engine="streaming")


def _child(tmp_path, step: str):  # noqa: ANN001, ANN202
    env = {**os.environ, "POLARS_MAX_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "big.parquet"), str(tmp_path / "warm.parquet"), step,
                           str(LIMIT_MIB)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_fit_completes_on_a_file_larger_than_the_memory_limit(tmp_path) -> None:
    _write_table(tmp_path / "big.parquet", ROWS)
    _write_table(tmp_path / "warm.parquet", 5_000)
    size = (tmp_path / "big.parquet").stat().st_size
    assert size > 2 * LIMIT_MIB * 2**20  # the file alone is over twice what the process may allocate
    fitted = _child(tmp_path, "fit")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert "'c0': 20000" in fitted.stdout and "'c7': 500" in fitted.stdout and "bounds 7" in fitted.stdout
    # The limit binds: reading the file whole under it fails.
    whole = _child(tmp_path, "read")
    assert whole.returncode != 0 and "read (" not in whole.stdout


def test_the_transform_runs_on_the_streaming_engine_without_falling_back_to_memory(tmp_path) -> None:
    raw = pl.DataFrame({"label": [1, 0, 1, 0], "item": [7, 8, 7, 9], "hist": ["7^8", "8", "", "9"], "price": [1.0, 2.5, None, 4.0],
                        "user": ["a", "b", "a", "c"]})
    raw.write_parquet(tmp_path / "raw.parquet")
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "item", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 2, "share_vocab_with": "item"},
        {"name": "price", "kind": "numeric", "fill": "median", "norm": "log"},
        {"name": "price_bucket", "kind": "numeric", "source": "price", "buckets": 3},
        {"name": "user_hashed", "kind": "categorical", "source": "user", "hash_buckets": 64},
        {"name": "group_user", "kind": "group", "source": "user"},
    ]).fit(raw)
    plan = pipe.transform(pl.scan_parquet(tmp_path / "raw.parquet")).show_graph(
        engine="streaming", plan_stage="physical", raw_output=True, show=False)
    # Polars colours a node that the streaming engine hands to the in-memory engine (which holds whole columns).
    fallback = [line for line in plan.splitlines() if 'fillcolor="0.0 0.3 1.0"' in line]
    assert "in-memory engine fallback" in plan and fallback == []
    assert plan.count("equi-join") == 2  # the vocabulary lookups (item, group_user) are joins


def test_quantiles_of_a_large_input_come_from_a_systematic_sample_and_say_so(monkeypatch) -> None:
    monkeypatch.setattr(FeaturePipeline, "QUANTILE_SAMPLE_ROWS", 1_000)
    n = 20_000
    rng = np.random.default_rng(0)
    x = np.sort(rng.lognormal(0, 1, n))  # sorted: a sample of the first rows would be far off
    frame = pl.DataFrame({"label": rng.integers(0, 2, n), "x": x, "y": x})
    fields = [{"name": "label", "kind": "label"}, {"name": "x", "kind": "numeric", "fill": "median"},
              {"name": "y", "kind": "numeric", "buckets": 4}]
    sampled = FeaturePipeline(fields).fit(frame)
    stats = sampled.schema["x"].stats
    assert stats["quantiles_sample_every"] == 20.0
    rank = np.searchsorted(x, stats["median"]) / n
    assert abs(rank - 0.5) < 0.002 and stats["median"] != float(np.median(x))
    bounds = sampled.schema["y"].stats["boundaries"]
    assert len(bounds) == 3 and all(abs(np.searchsorted(x, b) / n - q) < 0.002 for b, q in zip(bounds, (0.25, 0.5, 0.75)))
    monkeypatch.setattr(FeaturePipeline, "QUANTILE_SAMPLE_ROWS", n)
    exact = FeaturePipeline(fields).fit(frame).schema["x"].stats
    assert exact["median"] == pytest.approx(float(np.median(x)), rel=1e-12) and "quantiles_sample_every" not in exact


def test_integer_values_and_string_tokens_of_one_vocabulary_are_counted_together() -> None:
    raw = pl.DataFrame({"label": [1, 0, 1, 0], "item": [7, 8, 7, None], "hist": ["7^9", "8", "", "9^9^7"]})
    pipe = FeaturePipeline([
        {"name": "label", "kind": "label"},
        {"name": "item", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "max_len": 3, "share_vocab_with": "item"},
    ]).fit(raw)
    vocab = pipe.vocabs["item"]
    assert vocab["token"].to_list() == ["7", "9", "8"] and vocab["count"].to_list() == [4, 3, 2]
    out = pipe.transform(pl.DataFrame({"label": [0, 0, 0], "item": [9, 7, 5], "hist": ["8", "", ""]})).collect()
    assert out["item"].to_list() == [3, 2, 1]  # ids by count: 7 -> 2, 9 -> 3, 8 -> 4; unseen 5 -> OOV
