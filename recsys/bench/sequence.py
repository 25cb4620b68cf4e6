"""`recsys bench sequence`: SDIM against DIN-long target attention, side by side in one process, for a
training step and for scoring, over history lengths; and DARE's search stage at several attention dims.

Inputs are random ids with full-length histories (the worst case for attention), batch 256 by default,
on an in-memory schema with realistic vocabulary sizes, so the benchmark needs no dataset. Each
measurement is the median of `--repeats` timed calls after warm-up, and the calls compared are timed in
turns (DIN-long, SDIM, DIN-long, ...), so both sides of a ratio see the same machine state. Ratios are DIN-long time / SDIM time
(or full-dim DARE search / reduced-dim), so > 1 means faster.

BSE scoring needs each user's bucket sums first; that precompute is part of its cost. It is paid once per
user and serves every candidate scored for that user, so the BSE speedup is reported amortised over N
candidates per user (N = 1, 10, 100, 1,000): DIN-long time / (BSE scoring time + precompute time / N),
next to the figure without it (the limit of many candidates).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recsys.batch import Batch
from recsys.features.schema import FieldSpec, Schema
from recsys.models.dare import DARE
from recsys.models.din import DIN
from recsys.models.sdim import SDIM

N_ITEMS, N_ATTRS, N_USERS = 100_000, 1_000, 50_000
# Candidates per user over which BSE's per-user precompute is amortised.
CANDIDATES_PER_USER = (1, 10, 100, 1000)


def long_history_schema(length: int) -> Schema:
    return Schema([
        FieldSpec("user", "categorical", vocab_size=N_USERS),
        FieldSpec("item", "categorical", vocab_size=N_ITEMS),
        FieldSpec("item_attr", "categorical", vocab_size=N_ATTRS),
        FieldSpec("hist_item", "sequence", max_len=length, share_vocab_with="item", vocab_size=N_ITEMS),
        FieldSpec("hist_attr", "sequence", max_len=length, share_vocab_with="item_attr", vocab_size=N_ATTRS),
    ])


def random_batch(batch_size: int, length: int, generator: torch.Generator) -> Batch:
    sparse = torch.stack([torch.randint(2, n, (batch_size,), generator=generator) for n in (N_USERS, N_ITEMS, N_ATTRS)], 1)
    seq = torch.stack([torch.randint(2, n, (batch_size, length), generator=generator) for n in (N_ITEMS, N_ATTRS)], 1)
    return Batch(sparse, torch.zeros(batch_size, 0), seq, label=torch.randint(0, 2, (batch_size,), generator=generator).float())


def _timer(device: torch.device, repeats: int, warmup: int) -> Callable[[dict[Any, Callable[[], Any]]], dict[Any, float]]:
    """Median ms of each of several calls, timed in turns (a, b, a, b, ...), so that the calls whose
    ratio is reported see the same machine state: on a shared machine, timing one call's repeats and
    then the other's lets a burst of load from another job land on one side only."""

    def median_ms(calls: dict[Any, Callable[[], Any]]) -> dict[Any, float]:
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        times: dict[Any, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) * 1000)
        return {name: statistics.median(t) for name, t in times.items()}

    return median_ms


def _train_step(model: torch.nn.Module, batch: Batch) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
        loss.backward()
        optimizer.step()

    return step


def speedups(row: dict[str, float]) -> dict[str, Any]:
    """DIN-long's time over SDIM's for each measured pair; for BSE also with the per-user precompute
    amortised over N candidates per user: N candidates of one user cost N scorings plus one precompute."""
    score_din, score_bse, precompute = row["din_long_score_ms"], row["sdim_score_bse_ms"], row["sdim_bse_precompute_ms"]
    return {
        "train_step_speedup": row["din_long_train_step_ms"] / row["sdim_train_step_ms"],
        "score_speedup_full": score_din / row["sdim_score_full_ms"],
        "score_speedup_bse": score_din / score_bse,
        "score_speedup_bse_amortised": {str(n): n * score_din / (n * score_bse + precompute) for n in CANDIDATES_PER_USER},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    device = torch.device(args.device)
    timed = _timer(device, args.repeats, args.warmup)
    generator = torch.Generator().manual_seed(args.seed)
    rows: list[dict[str, Any]] = []
    dare_rows: list[dict[str, Any]] = []
    for length in tqdm(args.lengths, desc="history lengths", unit="L"):
        schema = long_history_schema(length)
        batch = random_batch(args.batch_size, length, generator).to(device)
        din = DIN(schema, embedding_dim=args.embedding_dim).to(device)
        sdim = SDIM(schema, embedding_dim=args.embedding_dim, num_hashes=args.num_hashes, hash_bits=args.hash_bits,
                    short_length=args.short_length).to(device)
        row: dict[str, Any] = {"length": length}
        din.train()
        sdim.train()
        row.update(timed({"din_long_train_step_ms": _train_step(din, batch), "sdim_train_step_ms": _train_step(sdim, batch)}))
        din.eval()
        sdim.eval()
        with torch.no_grad():
            sums = sdim.behaviour_sums(batch)  # BSE: computed once per user, outside the scoring time
            row.update(timed({
                "din_long_score_ms": lambda: din(batch),
                "sdim_score_full_ms": lambda: sdim(batch),
                "sdim_bse_precompute_ms": lambda: sdim.behaviour_sums(batch),
                "sdim_score_bse_ms": lambda: sdim.score_with_behaviour_sums(batch, sums),
            }))
        rows.append({**row, **speedups(row)})
        with torch.no_grad():
            dares = {dim: DARE(schema, embedding_dim=args.dare_embedding_dim, attention_dim=dim).to(device).eval()
                     for dim in args.dare_attention_dims}
            searched = timed({dim: (lambda d=dare: d.search(batch)) for dim, dare in dares.items()})
            dare_rows += [{"length": length, "attention_dim": dim, "search_ms": ms} for dim, ms in searched.items()]
        del din, sdim, dares
    for r in dare_rows:
        full = next(d for d in dare_rows if d["length"] == r["length"] and d["attention_dim"] == args.dare_attention_dims[0])
        r["search_speedup_vs_first"] = full["search_ms"] / r["search_ms"]
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "fn"},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sdim_vs_din_long": rows,
        "dare_search": dare_rows,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    amortised = " | ".join(f"BSE, {n:,} cand./user" for n in CANDIDATES_PER_USER)
    lines = [
        f"SDIM (m={s['num_hashes']}, tau={s['hash_bits']}, short k={s['short_length']}) vs DIN-long, batch {s['batch_size']}, "
        f"dim {s['embedding_dim']}, on {result['device']} ({result['threads']} threads); median ms",
        "",
        "| L | DIN-long train step | SDIM train step | speedup | DIN-long score | SDIM score (full) | SDIM score (BSE) | speedup (BSE) | BSE precompute |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["sdim_vs_din_long"]:
        lines.append(
            f"| {r['length']} | {r['din_long_train_step_ms']:.1f} | {r['sdim_train_step_ms']:.1f} | {r['train_step_speedup']:.1f}x | "
            f"{r['din_long_score_ms']:.2f} | {r['sdim_score_full_ms']:.2f} | {r['sdim_score_bse_ms']:.2f} | "
            f"{r['score_speedup_bse']:.1f}x | {r['sdim_bse_precompute_ms']:.2f} |"
        )
    lines += ["", "Scoring speedup of SDIM over DIN-long, full and with BSE, where BSE's per-user precompute is paid once "
              "for N candidates of the same user (DIN-long ms / (BSE ms + precompute ms / N)); the last column leaves the "
              "precompute out", "",
              f"| L | full | {amortised} | BSE, precompute left out |", "|---|---|" + "---|" * len(CANDIDATES_PER_USER) + "---|"]
    for r in result["sdim_vs_din_long"]:
        cells = " | ".join(f"{r['score_speedup_bse_amortised'][str(n)]:.2f}x" for n in CANDIDATES_PER_USER)
        lines.append(f"| {r['length']} | {r['score_speedup_full']:.2f}x | {cells} | {r['score_speedup_bse']:.1f}x |")
    lines += ["", f"DARE search stage (embedding dim {s['dare_embedding_dim']}), median ms", "",
              "| L | attention dim | search ms | speedup vs dim " + str(s["dare_attention_dims"][0]) + " |", "|---|---|---|---|"]
    for r in result["dare_search"]:
        lines.append(f"| {r['length']} | {r['attention_dim']} | {r['search_ms']:.2f} | {r['search_speedup_vs_first']:.2f}x |")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sequence", help="SDIM vs DIN-long (train step, scoring) and DARE's search stage, over history lengths")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--num-hashes", type=int, default=32)
    p.add_argument("--hash-bits", type=int, default=3)
    p.add_argument("--short-length", type=int, default=16)
    p.add_argument("--dare-embedding-dim", type=int, default=64)
    p.add_argument("--dare-attention-dims", type=int, nargs="+", default=[64, 32, 16])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for sequence.json and sequence.md")
    p.set_defaults(fn=main)


def main(args: argparse.Namespace) -> dict[str, Any]:
    result = run(args)
    table = markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sequence.json").write_text(json.dumps(result, indent=2))
        (out / "sequence.md").write_text(table + "\n")
    print(table)
    return result
