"""Benchmarks anyone can rerun.

    recsys bench zoo          train the zoo's CTR models on one dataset and print a leaderboard
    recsys bench throughput   our FinalMLP and DeepFM against DeepCTR-Torch's DeepFM, same data and
                              hyper-parameters, each in its own process, one after the other
    recsys bench sequence     SDIM / DIN-long / DARE speed over history lengths (recsys.bench_sequence)
    recsys bench accuracy     a suite of experiments over seeds, mean ± sd, and its claims (recsys.bench_accuracy)
    recsys bench serve        the scoring endpoint under load, ONNX Runtime against PyTorch eager
                              (recsys.serving.loadbench; --run NAME=RUN_DIR, repeatable)

Real data comes from RECSYS_DATA_DIR (frappe_x1/); without it `zoo` falls back to the clearly labelled
synthetic dataset, so a first run works anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ZOO_MODELS = ("lr", "fm", "deepfm", "dcnv2", "autoint", "finalmlp")


def frappe_available() -> bool:
    root = os.environ.get("RECSYS_DATA_DIR")
    return bool(root) and all((Path(root) / "frappe_x1" / f"{s}.csv").exists() for s in ("train", "valid", "test"))


def compose_train_config(overrides: list[str]):  # noqa: ANN201 - DictConfig
    """The config `recsys train OVERRIDES` would run, composed in-process (Hydra's compose API)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="recsys.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_zoo(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from recsys.train import train

    data = args.data
    if data == "auto":
        data = "frappe_x1" if frappe_available() else "synthetic"
    if data == "synthetic":
        print("RECSYS_DATA_DIR has no frappe_x1/: using the SYNTHETIC dataset with planted interactions "
              "(a smoke run, not a benchmark).", flush=True)
    out = Path(args.out or f"outputs/zoo/{data}-{time.strftime('%Y%m%d-%H%M%S')}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(ZOO_MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; the zoo has {list(ZOO_MODELS)}")
    rows = []
    for model in tqdm(models, desc=f"zoo on {data}", unit="model"):
        overrides = [f"experiment={model}_frappe_x1"] if data == "frappe_x1" else [f"model={model}", f"data={data}"]
        overrides += [f"paths.output_dir={out / model}", "trainer.enable_progress_bar=false"]
        if args.max_epochs:
            overrides.append(f"trainer.max_epochs={args.max_epochs}")
        rows.append(train(compose_train_config(overrides), out / model))
    # The same collector and tables as `recsys report`, so the zoo also gets the HTML report.
    from recsys.report import markdown, report

    frame, _ = report(out, out / "report")
    title = f"Leaderboard on {data}" + (" (SYNTHETIC data)" if data == "synthetic" else "")
    table = markdown(frame)
    (out / "leaderboard.md").write_text(f"# {title}\n\n{table}")
    print(f"\n{title}\n{table}\nwritten to {out / 'leaderboard.md'} and {out / 'report' / 'report.html'}")
    return rows


# ---------------------------------------------------------------------------- throughput
def _prepared_frappe():  # noqa: ANN202
    from recsys.data import prepare_configured

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
    from recsys.train import train

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
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "bench", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {argv} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    if not frappe_available():
        raise SystemExit("bench throughput needs Frappe_x1: set RECSYS_DATA_DIR to the folder holding frappe_x1/")
    out = Path(args.out or f"outputs/bench/throughput-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    _prepared_frappe()  # fit features once, outside the timings
    common = ["--out", str(out), "--max-epochs", str(args.max_epochs), "--seed", str(args.seed)]
    steps = [["_ours", "--model", "finalmlp", *common], ["_ours", "--model", "deepfm", *common]]
    if args.precision:
        steps += [["_ours", "--model", m, "--precision", args.precision, *common] for m in ("finalmlp", "deepfm")]
    steps.append(["_peer_deepctr", *common])
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


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:  # its own options, so its own parser
        from recsys.serving.loadbench import main as serve_bench_main

        serve_bench_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="recsys bench")
    sub = parser.add_subparsers(dest="what", required=True)
    zoo = sub.add_parser("zoo", help="train the zoo on one dataset and print a leaderboard")
    zoo.add_argument("--data", default="auto", choices=["auto", "frappe_x1", "synthetic"])
    zoo.add_argument("--models", default=",".join(ZOO_MODELS))
    zoo.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: the experiment's, 100)")
    zoo.add_argument("--out", default=None)
    thr = sub.add_parser("throughput", help="our training throughput against DeepCTR-Torch on Frappe_x1")
    thr.add_argument("--max-epochs", type=int, default=100)
    thr.add_argument("--seed", type=int, default=2021)
    thr.add_argument("--precision", default=None, help="also run our two models at this Lightning precision, e.g. bf16-mixed")
    thr.add_argument("--out", default=None)
    from recsys.bench_sequence import add_parser as add_sequence_parser

    add_sequence_parser(sub)
    from recsys.bench_accuracy import add_parser as add_accuracy_parser

    add_accuracy_parser(sub)
    for hidden, fn in (("_ours", run_ours), ("_peer_deepctr", run_peer_deepctr)):
        p = sub.add_parser(hidden)
        p.add_argument("--out", required=True)
        p.add_argument("--max-epochs", type=int, default=100)
        p.add_argument("--seed", type=int, default=2021)
        p.add_argument("--model", default="deepfm")
        p.add_argument("--precision", default=None)
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    if args.what == "zoo":
        run_zoo(args)
    elif args.what == "throughput":
        run_throughput(args)
    elif args.what in ("sequence", "accuracy"):
        args.fn(args)
    else:
        print(json.dumps(args.fn(args)))
