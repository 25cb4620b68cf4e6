"""bench retrieval times the endpoint on an index worth serving: the fastest that met the recall goal."""

from __future__ import annotations

import argparse

from recsys.bench.retrieval import serving_choice

ARGS = argparse.Namespace(hnsw_m=32, ef_construction=80, ef_search=[32, 256])


def _row(index: str, kind: str, settings: dict, qps: float, meets: bool) -> dict:
    return {"index": index, "kind": kind, "settings": settings, "single_qps": qps, "meets_goal": meets}


def test_the_fastest_index_that_met_the_goal_is_served_whatever_its_kind() -> None:
    rows = [_row("exact", "exact", {}, 70, False),
            _row("hnsw ef_search=32", "hnsw", {"hnsw_m": 32, "ef_construction": 80, "ef_search": 32}, 9_000, False),
            _row("ivf nprobe=32", "ivf", {"nprobe": 32}, 5_600, True),
            _row("ivf nprobe=128", "ivf", {"nprobe": 128}, 1_600, True)]
    assert serving_choice(ARGS, rows) == ("ivf nprobe=32", "ivf", {"nprobe": 32})


def test_without_an_index_that_met_the_goal_the_widest_hnsw_is_served() -> None:
    rows = [_row("exact", "exact", {}, 70, False), _row("ivf nprobe=8", "ivf", {"nprobe": 8}, 14_000, False)]
    assert serving_choice(ARGS, rows) == ("hnsw ef_search=256", "hnsw", {"hnsw_m": 32, "ef_construction": 80, "ef_search": 256})
