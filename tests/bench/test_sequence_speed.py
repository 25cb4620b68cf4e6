"""`recsys bench sequence`: the calls of a ratio are timed in turns, and a tiny real run reports every row."""

from __future__ import annotations

import argparse

import torch

from recsys.bench.sequence import _timer, add_parser, run


def test_compared_calls_are_timed_in_turns_after_warm_up() -> None:
    order: list[str] = []
    medians = _timer(torch.device("cpu"), repeats=3, warmup=1)({"a": lambda: order.append("a"), "b": lambda: order.append("b")})
    assert order == ["a", "b"] * 4  # one warm-up round, then three timed rounds, alternating
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_a_tiny_run_reports_both_models_and_every_dare_dim() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["sequence", "--lengths", "16", "32", "--batch-size", "8", "--repeats", "1", "--warmup", "0",
                              "--device", "cpu", "--dare-attention-dims", "16", "8"])
    result = run(args)
    rows = result["sdim_vs_din_long"]
    assert [r["length"] for r in rows] == [16, 32]
    for r in rows:
        assert r["train_step_speedup"] == r["din_long_train_step_ms"] / r["sdim_train_step_ms"] > 0
        assert r["score_speedup_bse"] == r["din_long_score_ms"] / r["sdim_score_bse_ms"] > 0
    dare = [(d["length"], d["attention_dim"]) for d in result["dare_search"]]
    assert dare == [(16, 16), (16, 8), (32, 16), (32, 8)]
    assert all(d["search_speedup_vs_first"] == 1.0 for d in result["dare_search"] if d["attention_dim"] == 16)
