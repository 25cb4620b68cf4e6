"""`recsys bench throughput`: our training speed on Frappe_x1 against DeepCTR-Torch's, each contender in a
fresh interpreter (`python -m recsys.bench.throughput CONTENDER ...`, started by the benchmark), on the
same transformed ids and hyper-parameters."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _prepared_frappe():  # noqa: ANN202
    from recsys.config import compose_train_config, prepare_configured

    return prepare_configured(compose_train_config(["experiment=deepfm_frappe_x1"]))


def run_peer_deepctr(args: argparse.Namespace) -> dict[str, Any]:
    """DeepCTR-Torch's DeepFM on the same transformed Frappe_x1 ids, with the BARS protocol around its
    `fit`: one epoch per call, validation AUC after each, LR x0.1 on a plateau, stop after `patience`
    epochs without a better AUC, test AUC of the best epoch's weights."""
    import copy

    import numpy as np
    import polars as pl
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import DeepFM

    from recsys.metrics import auc

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    prepared = _prepared_frappe()
    schema = prepared.schema()
    names = [f.name for f in schema.sparse]
    frames = {s: pl.read_parquet(prepared.split_path(s)) for s in ("train", "valid", "test")}
    inputs = {s: {n: f[n].to_numpy() for n in names} for s, f in frames.items()}
    labels = {s: f[schema.label.name].to_numpy() for s, f in frames.items()}
    columns = [SparseFeat(f.name, vocabulary_size=f.vocab_size, embedding_dim=10) for f in schema.sparse]
    # DeepCTR's L2 is lambda * sum(w^2) over whole tables; BARS's is lambda/2 * sum(w^2): 0.05 -> 0.025.
    model = DeepFM(columns, columns, dnn_hidden_units=(400, 400, 400), l2_reg_linear=0.025, l2_reg_embedding=0.025,
                   l2_reg_dnn=0.0, init_std=1e-4, seed=args.seed, dnn_dropout=0.2, dnn_activation="relu",
                   dnn_use_bn=True, device="cpu")
    model.compile(torch.optim.Adam(model.parameters(), lr=1e-3), "binary_crossentropy", metrics=[])
    best_auc, best_state, best_elapsed, stale, train_seconds, epochs = -1.0, None, None, 0, 0.0, 0
    start = time.perf_counter()
    for epoch in range(args.max_epochs):
        t0 = time.perf_counter()
        model.fit(inputs["train"], labels["train"], batch_size=4096, epochs=1, verbose=0, shuffle=True)
        train_seconds += time.perf_counter() - t0
        epochs += 1
        val_auc = auc(torch.from_numpy(model.predict(inputs["valid"], batch_size=16384).ravel()), torch.from_numpy(labels["valid"]))
        if val_auc > best_auc + 1e-6:
            best_auc, best_state, best_elapsed, stale = val_auc, copy.deepcopy(model.state_dict()), time.perf_counter() - start, 0
        else:
            stale += 1
            for group in model.optim.param_groups:
                group["lr"] = max(group["lr"] * 0.1, 1e-6)
            if stale >= 2:
                break
    model.load_state_dict(best_state)
    test_auc = auc(torch.from_numpy(model.predict(inputs["test"], batch_size=16384).ravel()), torch.from_numpy(labels["test"]))
    n_train = len(labels["train"])
    return {"name": "DeepCTR-Torch DeepFM", "val_auc": best_auc, "test_auc": test_auc, "epochs": epochs,
            "train_samples_per_second": n_train * epochs / train_seconds, "time_to_best_seconds": best_elapsed}


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.commands.train import train
    from recsys.config import compose_train_config

    out = Path(args.out) / (f"ours_{args.model}" + (f"_{args.precision}" if args.precision else ""))
    overrides = [f"experiment={args.model}_frappe_x1", f"paths.output_dir={out}", "trainer.enable_progress_bar=false",
                 f"trainer.max_epochs={args.max_epochs}", f"seed={args.seed}"]
    if args.precision:
        overrides.append(f"trainer.precision={args.precision}")
    m = train(compose_train_config(overrides), out)
    label = {"finalmlp": "recsys-zoo FinalMLP", "deepfm": "recsys-zoo DeepFM"}[args.model]
    if args.precision:
        label += f" ({args.precision})"
    return {"name": label, "val_auc": m["val"]["auc"], "test_auc": m["test"]["auc"], "epochs": m["epochs"],
            "train_samples_per_second": m["train_samples_per_second"], "time_to_best_seconds": m["time_to_best_seconds"]}


def _in_subprocess(argv: list[str]) -> dict[str, Any]:
    """Run one contender in a fresh interpreter, so neither side inherits the other's caches or threads."""
    proc = subprocess.run([sys.executable, "-m", "recsys.bench.throughput", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {argv} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from recsys.bench.zoo import frappe_available

    if not frappe_available():
        raise SystemExit("bench throughput needs Frappe_x1: set RECSYS_DATA_DIR to the folder holding frappe_x1/")
    out = Path(args.out or f"outputs/bench/throughput-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    _prepared_frappe()  # fit features once, outside the timings
    common = ["--out", str(out), "--max-epochs", str(args.max_epochs), "--seed", str(args.seed)]
    steps = [["ours", "--model", "finalmlp", *common], ["ours", "--model", "deepfm", *common]]
    if args.precision:
        steps += [["ours", "--model", m, "--precision", args.precision, *common] for m in ("finalmlp", "deepfm")]
    steps.append(["peer_deepctr", *common])
    results = [_in_subprocess(step) for step in tqdm(steps, desc="throughput", unit="run")]
    peer = results[-1]
    lines = ["| implementation | train samples/s | vs DeepCTR-Torch DeepFM | time to best val AUC (s) | epochs | best val AUC | test AUC |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        r["speedup_vs_peer"] = r["train_samples_per_second"] / peer["train_samples_per_second"]
        lines.append(f"| {r['name']} | {r['train_samples_per_second']:,.0f} | {r['speedup_vs_peer']:.2f}x | "
                     f"{r['time_to_best_seconds']:.1f} | {r['epochs']} | {r['val_auc']:.4f} | {r['test_auc']:.4f} |")
    table = "\n".join(lines)
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    (out / "throughput.md").write_text(table + "\n")
    print(table)
    return results

def add_parser(sub: argparse._SubParsersAction) -> None:
    thr = sub.add_parser("throughput", help="our training throughput against DeepCTR-Torch on Frappe_x1")
    thr.add_argument("--max-epochs", type=int, default=100)
    thr.add_argument("--seed", type=int, default=2021)
    thr.add_argument("--precision", default=None, help="also run our two models at this Lightning precision, e.g. bf16-mixed")
    thr.add_argument("--out", default=None)
    thr.set_defaults(fn=run_throughput)


def _worker(argv: list[str]) -> None:
    """One contender in this interpreter; prints its result as one JSON line (what `_in_subprocess` reads)."""
    parser = argparse.ArgumentParser(prog="python -m recsys.bench.throughput")
    sub = parser.add_subparsers(dest="contender", required=True)
    for name, fn in (("ours", run_ours), ("peer_deepctr", run_peer_deepctr)):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--max-epochs", type=int, default=100)
        p.add_argument("--seed", type=int, default=2021)
        p.add_argument("--model", default="deepfm")
        p.add_argument("--precision", default=None)
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    print(json.dumps(args.fn(args)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
