"""`recsys bench next-item`: our SASRec against RecBole's, side by side in one command, on the same split
and at the same size.

    recsys bench next-item --peer-python /path/to/recbole-env/bin/python [--dataset Beauty] [--repeats 3]

RecBole (1.2.1) needs pins that clash with ours, so it runs in its own interpreter (docs/peers.md says how
to make it), started by this command with `recsys/bench/peers/recbole_sasrec.py`. Both sides:
- the same data: our leave-one-out split of the S3-Rec file, written for RecBole as atomic files whose
  timestamps are positions, each user's training window (the last `window` items) then the validation
  and the test item, so RecBole's own leave-one-out split gives the same training targets, validation
  inputs and test inputs as ours;
- the same model size: 1 block, 1 head, d 64, feed-forward width 64, ReLU, dropout 0.5, 50 items, Adam lr
  1e-3 with L2 1e-4, full-softmax cross-entropy, and the same number of targets per batch (ours: 256 users;
  RecBole batches targets); the architectures differ in details neither library can configure (RecBole's
  embedding LayerNorm and attention output projection, post-LN; ours is the original SASRec block);
- the same evaluation: every item ranked, each user's whole history masked, ties counted against the
  target, selection on validation NDCG@20 with the same patience, test at the best epoch, metrics
  computed here from both sides' target ranks.

Speed is seconds per training epoch (evaluation excluded), measured `--repeats` times in turns (ours,
RecBole, ours, ...) over `--speed-epochs` epochs each; accuracy is one full run per side to early
stopping (`--max-epochs`, `--patience`), also in turns. Results: OUT/next_item.json and OUT/next_item.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

PEER_SCRIPT = Path(__file__).parent / "peers" / "recbole_sasrec.py"
EXPERIMENTS = {"Beauty": "beauty", "Sports_and_Outdoors": "sports", "Toys_and_Games": "toys", "Yelp": "yelp"}


def write_peer_inputs(prepared_raw: Path, work: Path, name: str, window: int) -> dict[str, int]:
    """RecBole's atomic file and the masks from our raw leave-one-out splits (raw ids as tokens)."""
    import polars as pl

    splits = {s: pl.read_parquet(prepared_raw / f"{s}.parquet") for s in ("train", "valid", "test")}
    frame = (splits["train"].select("user", "history")
             .join(splits["valid"].select("user", pl.col("target").alias("valid")), on="user")
             .join(splits["test"].select("user", pl.col("target").alias("test")), on="user"))
    rows = frame.select(
        pl.col("user").cast(pl.String).alias("user_id:token"),
        pl.concat_list(pl.col("history").list.tail(window), pl.col("valid"), pl.col("test")).alias("items"),
    ).with_columns(pl.int_ranges(pl.col("items").list.len()).alias("timestamp:float")).explode("items", "timestamp:float")
    folder = work / "dataset" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows.select("user_id:token", pl.col("items").cast(pl.String).alias("item_id:token"),
                pl.col("timestamp:float").cast(pl.Float64)).write_csv(folder / f"{name}.inter", separator="\t")
    exclude = {
        "valid": {str(u): [str(i) for i in h] for u, h in zip(frame["user"], frame["history"].to_list())},
        "test": {str(u): [str(i) for i in h] + [str(v)] for u, h, v in
                 zip(frame["user"], frame["history"].to_list(), frame["valid"])},
    }
    (work / "exclude.json").write_text(json.dumps(exclude))
    targets = int(frame.select((pl.col("history").list.len().clip(upper_bound=window) - 1).sum()).item())
    return {"users": frame.height, "train_targets": targets}


def run_ours(dataset: str, out: Path, max_epochs: int, patience: int, seed: int, threads: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "recsys.commands.cli", "train", f"experiment=sasrec_{EXPERIMENTS[dataset]}",
               f"paths.output_dir={out}", f"trainer.max_epochs={max_epochs}", f"callbacks.early_stopping.patience={patience}",
               f"seed={seed}", f"num_threads={threads}", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"our run failed: {' '.join(command)}\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"name": "recsys-zoo SASRec", "epochs": m["epochs"], "epoch_seconds": m["train_epoch_seconds"],
            "best_epoch": m["best_epoch"], "val_ndcg@20": m["val"]["ndcg@20"], "test": m["test"],
            "num_parameters": m["num_parameters"]}


def run_peer(python: str, work: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from recsys.metrics import ranking_metrics

    (work / "settings.json").write_text(json.dumps(settings))
    (work / "test_ranks.npy").unlink(missing_ok=True)
    # In the work folder: RecBole writes its log/ and log_tensorboard/ folders into its working directory.
    proc = subprocess.run([python, str(PEER_SCRIPT.resolve()), "--work", str(work.resolve()), "--settings",
                           str((work / "settings.json").resolve())], capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"the RecBole run failed (interpreter {python}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["test"] = ranking_metrics(torch.from_numpy(np.load(work / "test_ranks.npy", allow_pickle=False)))
    return result


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"SASRec on {s['dataset']} ({result['data']['users']:,} users, {result['data']['train_targets']:,} training "
             f"targets): 1 block, 1 head, d {s['dim']}, dropout {s['dropout']}, {s['max_len']} items; full ranking with the "
             f"history masked; {os.cpu_count()} cores, torch threads {s['threads']}.", "",
             f"Seconds per training epoch: median (min–max) over {s['repeats']} runs of {s['speed_epochs']} epochs each, in "
             "turns. Accuracy: one run per side to early stopping on validation NDCG@20 "
             f"(patience {s['patience']}, at most {s['max_epochs']} epochs); test at the best epoch.", "",
             "| implementation | parameters | s / epoch | vs RecBole | epochs (best) | test NDCG@10 | test HR@10 | test NDCG@20 | test HR@20 | test MRR |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    peer_speed = statistics.median(result["speed"]["RecBole SASRec"])
    for name in ("recsys-zoo SASRec", "RecBole SASRec"):
        speed = result["speed"][name]
        acc = result["accuracy"].get(name)
        ratio = f"{peer_speed / statistics.median(speed):.2f}x" if name != "RecBole SASRec" else "1.00x"
        if acc is None:
            lines.append(f"| {name} | | {_spread(speed)} | {ratio} | | | | | | |")
            continue
        t = acc["test"]
        lines.append(f"| {name} | {acc['num_parameters']:,} | {_spread(speed)} | {ratio} | {acc['epochs']} ({acc['best_epoch'] + 1}) | "
                     f"{t['ndcg@10']:.4f} | {t['hr@10']:.4f} | {t['ndcg@20']:.4f} | {t['hr@20']:.4f} | {t['mrr']:.4f} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from recsys.config import compose_train_config, datamodule_options, prepare_configured
    from recsys.data.prepare import materialise_recipe

    if not Path(args.peer_python).exists():
        raise SystemExit(f"--peer-python {args.peer_python} does not exist; docs/peers.md says how to make RecBole's interpreter")
    cfg = compose_train_config([f"experiment=sasrec_{EXPERIMENTS[args.dataset]}"])
    prepare_configured(cfg)  # fits our features once, outside every timing
    from omegaconf import OmegaConf

    raw = materialise_recipe(OmegaConf.to_container(cfg.data, resolve=True), cfg.paths.cache_dir)
    out = Path(args.out or f"outputs/bench/next_item-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    work = out / "recbole"
    name = f"s3rec_{args.dataset}"
    options = datamodule_options(cfg)
    data = write_peer_inputs(raw, work, name, int(options["window"]))
    threads = args.threads or os.cpu_count() or 1
    steps = max(1, -(-len_users(raw) // int(options["batch_size"])))
    settings = {"dataset": name, "max_len": int(cfg.model.max_len), "num_blocks": int(cfg.model.num_blocks),
                "num_heads": int(cfg.model.num_heads), "dim": int(cfg.model.embedding_dim), "dropout": float(cfg.model.dropout),
                "learning_rate": float(cfg.task.learning_rate), "weight_decay": float(cfg.task.weight_decay),
                # RecBole batches targets: the same number of targets per step as our batches of users.
                "train_batch_size": -(-data["train_targets"] // steps), "seed": args.seed, "threads": threads,
                "patience": args.patience, "max_epochs": args.max_epochs, "speed_epochs": args.speed_epochs,
                "repeats": args.repeats}
    speed: dict[str, list[float]] = {"recsys-zoo SASRec": [], "RecBole SASRec": []}
    accuracy: dict[str, dict[str, Any]] = {}
    plan = [("speed", r) for r in range(args.repeats)] + ([("accuracy", 0)] if args.max_epochs > args.speed_epochs else [])
    with tqdm(total=2 * len(plan), desc="next-item bench", unit="run") as bar:
        for what, r in plan:
            epochs, patience = (args.speed_epochs, args.speed_epochs + 1) if what == "speed" else (args.max_epochs, args.patience)
            ours = run_ours(args.dataset, out / f"ours-{what}-{r}", epochs, patience, args.seed, threads)
            bar.update(1)
            peer = run_peer(args.peer_python, work, {**settings, "max_epochs": epochs, "patience": patience})
            bar.update(1)
            for result in (ours, peer):
                speed[result["name"]] += result["epoch_seconds"][:epochs]
                if what == "accuracy":
                    accuracy[result["name"]] = result
    result = {"settings": settings, "data": data, "speed": speed, "accuracy": accuracy,
              "environment": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "peer_python": args.peer_python,
                              "load_average_at_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    (out / "next_item.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "next_item.md").write_text(table)
    print(table)
    return result


def len_users(raw: Path) -> int:
    import polars as pl

    return pl.scan_parquet(raw / "train.parquet").select(pl.len()).collect().item()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("next-item", help="our SASRec against RecBole's (its own interpreter), same split, size and evaluation")
    p.add_argument("--peer-python", required=True, help="the Python of RecBole's environment (docs/peers.md)")
    p.add_argument("--dataset", default="Beauty", choices=sorted(EXPERIMENTS))
    p.add_argument("--repeats", type=int, default=3, help="speed runs per side, in turns")
    p.add_argument("--speed-epochs", type=int, default=2, help="epochs per speed run")
    p.add_argument("--max-epochs", type=int, default=200, help="the accuracy runs' epoch cap (0: no accuracy runs)")
    p.add_argument("--patience", type=int, default=10, help="epochs without a better validation NDCG@20 before stopping")
    p.add_argument("--threads", type=int, default=None, help="torch threads on each side (default: every core)")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=main)
