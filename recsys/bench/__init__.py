"""`recsys bench ...`: benchmarks anyone can rerun, one module per benchmark, built on the library.

    recsys bench zoo          the zoo's CTR models on one dataset and a leaderboard   (zoo.py)
    recsys bench throughput   our training speed against the peer libraries, in turns (throughput.py)
    recsys bench sequence     SDIM / DIN-long / DARE speed over history lengths        (sequence.py)
    recsys bench accuracy     a suite of experiments over seeds, and its claims        (accuracy.py)
    recsys bench serve        the HTTP endpoint under load, ONNX Runtime vs PyTorch   (serve.py)
    recsys bench next-item    our SASRec against RecBole's, same split, size, eval      (next_item.py)
    recsys bench retrieval    exact vs approximate top-K over a large catalogue         (retrieval.py)
    recsys bench streaming    fit, transform and training loader at 10M-100M rows    (streaming.py)
"""

from __future__ import annotations

import argparse

# Each benchmark module has add_parser(subparsers), which sets `fn` for its command.
BENCHMARKS = ("zoo", "throughput", "sequence", "accuracy", "serve", "next_item", "retrieval", "streaming")


def parser() -> argparse.ArgumentParser:
    import importlib

    root = argparse.ArgumentParser(prog="recsys bench", description="Benchmarks anyone can rerun (see BENCHMARKS.md).")
    sub = root.add_subparsers(dest="what", required=True)
    for name in BENCHMARKS:
        importlib.import_module(f"recsys.bench.{name}").add_parser(sub)
    return root


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    args.fn(args)
