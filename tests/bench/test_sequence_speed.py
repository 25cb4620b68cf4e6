"""`recsys bench sequence`: the calls of a ratio are timed in turns, and each reported speedup puts the
right call over the right one: a call made slow on purpose must show up on its side of the ratio."""

from __future__ import annotations

import argparse
import time

import pytest
import torch

from recsys.bench import sequence as bench
from recsys.bench.sequence import _timer, add_parser, markdown, run

SLOW_S = 0.1  # far above what any of these calls takes at the tiny sizes below, after a warm-up


def test_compared_calls_are_timed_in_turns_after_warm_up() -> None:
    order: list[str] = []
    medians = _timer(torch.device("cpu"), repeats=3, warmup=1)({"a": lambda: order.append("a"), "b": lambda: order.append("b")})
    assert order == ["a", "b"] * 4  # one warm-up round, then three timed rounds, alternating
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


@pytest.fixture(autouse=True)
def _small_vocabularies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small tables, so that every step is a few ms and a planted sleep dominates its side of a ratio."""
    monkeypatch.setattr(bench, "N_ITEMS", 1_000)
    monkeypatch.setattr(bench, "N_ATTRS", 50)
    monkeypatch.setattr(bench, "N_USERS", 500)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a loaded machine a two-thread pool makes each tiny op wait for a descheduled
    worker (tens of ms), which would swamp the planted sleep."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_run(*extra: str) -> dict:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["sequence", "--lengths", "16", "--batch-size", "8", "--repeats", "3", "--warmup", "1",
                              "--device", "cpu", "--dare-attention-dims", "16", "8", "--num-hashes", "4", *extra])
    return run(args)


def _slowed(cls: type, method: str, when=lambda self: True) -> type:  # noqa: ANN001
    """A subclass of `cls` whose `method` sleeps SLOW_S first (when `when(self)`)."""

    def slow(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if when(self):
            time.sleep(SLOW_S)
        return getattr(cls, method)(self, *args, **kwargs)

    return type(f"Slow{cls.__name__}", (cls,), {method: slow})


def test_a_slow_din_long_shows_as_sdim_speedup_and_a_slow_sdim_as_slowdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "DIN", _slowed(bench.DIN, "forward"))
    (row,) = _tiny_run()["sdim_vs_din_long"]
    assert row["din_long_train_step_ms"] > SLOW_S * 1000
    assert row["train_step_speedup"] > 1.5 and row["score_speedup_full"] > 1.5 and row["score_speedup_bse"] > 1.5

    monkeypatch.setattr(bench, "DIN", bench.DIN.__base__)
    monkeypatch.setattr(bench, "SDIM", _slowed(bench.SDIM, "forward"))
    (row,) = _tiny_run()["sdim_vs_din_long"]
    assert row["train_step_speedup"] < 1 / 1.5 and row["score_speedup_full"] < 1 / 1.5
    assert row["score_speedup_bse"] > row["score_speedup_full"]  # BSE scoring does not call forward


def test_bse_speedup_carries_its_precompute_amortised_over_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    # A slow precompute: one candidate per user pays all of it, a thousand pay a thousandth each.
    monkeypatch.setattr(bench, "SDIM", _slowed(bench.SDIM, "behaviour_sums"))
    result = _tiny_run()
    (row,) = result["sdim_vs_din_long"]
    amortised = row["score_speedup_bse_amortised"]
    assert row["sdim_bse_precompute_ms"] > SLOW_S * 1000
    assert amortised["1"] < 0.5  # the precompute dominates one candidate
    assert amortised["1"] < amortised["10"] < amortised["100"] < amortised["1000"] <= row["score_speedup_bse"]
    # With N candidates, N scorings of each model and one precompute.
    n = 10
    expected = n * row["din_long_score_ms"] / (n * row["sdim_score_bse_ms"] + row["sdim_bse_precompute_ms"])
    assert amortised["10"] == pytest.approx(expected)
    table = markdown(result)
    assert "BSE, 1,000 cand./user" in table and f"{amortised['1']:.2f}x" in table


def test_dare_search_speedup_is_the_first_dims_time_over_each_dims(monkeypatch: pytest.MonkeyPatch) -> None:
    # The full-dim search (attention dim 16, listed first) made slow: the narrower dim must show as faster.
    monkeypatch.setattr(bench, "DARE", _slowed(bench.DARE, "search", when=lambda self: self.attention_dim == 16))
    result = _tiny_run()
    by_dim = {d["attention_dim"]: d for d in result["dare_search"]}
    assert [(d["length"], d["attention_dim"]) for d in result["dare_search"]] == [(16, 16), (16, 8)]
    assert by_dim[16]["search_speedup_vs_first"] == 1.0
    assert by_dim[8]["search_speedup_vs_first"] > 1.5
