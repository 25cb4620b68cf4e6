"""`recsys bench throughput`: our training speed on Frappe_x1 against the peer libraries, side by side.

    recsys bench throughput [--repeats 3] [--peer deepctr] [--peer fuxictr --peer-python PATH
        --fuxictr-model-zoo DIR] [--finalmlp] [--precision bf16-mixed] [--profile] [--out DIR]

Every contender trains to early stopping with the BARS protocol and settings (DeepFM: embedding 10, MLP
400-400-400, dropout 0.2, batch norm; batch 4096, Adam 1e-3, embedding L2 0.05 in BARS's lambda/2
convention over whole tables, gradient norm clipped to 10, LR x0.1 on a plateau, stop after 2 epochs
without a better validation AUC), each run in a fresh interpreter: ours and DeepCTR-Torch as
`python -m recsys.bench.throughput CONTENDER ...`, FuxiCTR in its own interpreter (`--peer-python`) as
`recsys/bench/peers/fuxictr_peer.py`. The contenders run in turns, `--repeats` rounds of
(ours, peer, peer, ...), so a burst of load from another job lands on every side; tables give the median
over rounds and the spread (min-max), and each ratio is the median of the per-round ratios.

The first table is like for like: DeepFM against DeepFM, all in fp32. FinalMLP (a different model, with
about 40% of DeepFM's MLP multiply-adds) gets its own, labelled table. bf16 is compared only with peers
that also train under bf16 autocast. `--profile` adds where one of our training steps spends its time,
against the GFLOP/s of a plain GEMM of the same shapes measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = ("deepctr", "fuxictr")
LIBRARY = {"ours": "recsys-zoo", "deepctr": "DeepCTR-Torch", "fuxictr": "FuxiCTR"}
PEER_SCRIPT = Path(__file__).parent / "peers" / "fuxictr_peer.py"
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"  # the profiler's name for recsys/kernels/linear.py's oneDNN product


def _prepared_frappe():  # noqa: ANN202
    from recsys.config import compose_train_config, prepare_configured

    return prepare_configured(compose_train_config(["experiment=deepfm_frappe_x1"]))


# ------------------------------------------------------------------------------------------ contenders
def deepctr_deepfm(schema, seed: int):  # noqa: ANN001, ANN201 - a Schema in, a compiled DeepCTR-Torch DeepFM out
    """DeepCTR-Torch's DeepFM with the BARS DeepFM settings, its training objective matched to BARS's (see
    `run_peer_deepctr`), compiled with its optimiser and loss: ready for `fit`."""
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import DeepFM

    columns = [SparseFeat(f.name, vocabulary_size=f.vocab_size, embedding_dim=10) for f in schema.sparse]
    # l2 0.025 = BARS's lambda / 2 (0.05 / 2), on a mean loss (below); 0 on the MLP, as BARS's net_regularizer.
    model = DeepFM(columns, columns, dnn_hidden_units=(400, 400, 400), l2_reg_linear=0.025, l2_reg_embedding=0.025,
                   l2_reg_dnn=0.0, init_std=1e-4, seed=seed, dnn_dropout=0.2, dnn_activation="relu",
                   dnn_use_bn=True, device="cpu")
    for linear in [*model.dnn.linears, model.dnn_linear]:  # BARS's (and our) MLP initialisation
        torch.nn.init.xavier_normal_(linear.weight)
        if linear.bias is not None:
            torch.nn.init.zeros_(linear.bias)

    class ClippedAdam(torch.optim.Adam):
        """Adam that first clips the gradient norm to 10, as BARS's training loop does."""

        def step(self, closure=None):  # noqa: ANN001, ANN202
            torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"] if p.grad is not None], 10.0)
            return super().step(closure)

    model.compile(ClippedAdam(model.parameters(), lr=1e-3), mean_bce, metrics=[])
    return model


def autocast_forward(model) -> None:  # noqa: ANN001 - a peer's nn.Module
    """A peer model's forward pass under bf16 autocast while it trains, as Lightning's bf16-mixed runs ours:
    the loss, the backward pass and the optimiser step stay outside autocast (PyTorch's AMP recipe), and
    evaluation runs in fp32 (the peers' prediction paths convert to numpy, which has no bfloat16). Wrapping a
    peer's whole `fit` in autocast instead left DeepCTR-Torch's DeepFM at validation AUC .917 after one epoch,
    falling after; with the forward pass alone it follows its fp32 curve (.934, .960, .971 over 3 epochs)."""
    import torch

    forward = model.forward

    def bf16_forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.training):
            return forward(*args, **kwargs)

    model.forward = bf16_forward


def mean_bce(y_pred, y_true, reduction: str = "sum"):  # noqa: ANN001, ANN201 - tensors
    """BCE averaged over the batch, whatever `reduction` DeepCTR-Torch's `fit` asks for (it always asks for
    'sum'); BARS's objective is the batch mean."""
    import torch

    return torch.nn.functional.binary_cross_entropy(y_pred.float(), y_true.float(), reduction="mean")


def run_peer_deepctr(args: argparse.Namespace) -> dict[str, Any]:
    """DeepCTR-Torch 0.3.0's DeepFM on the same transformed Frappe_x1 ids, its training objective matched
    to BARS's (and ours) where its defaults differ, with the BARS protocol around its `fit`: one epoch per
    call, validation AUC after each, LR x0.1 on a plateau, stop after 2 epochs without a better AUC, test
    AUC of the best epoch's weights.

    What is matched (docs/peers.md, "DeepCTR-Torch"):
    - the loss: DeepCTR's `fit` sums the BCE over the batch (it passes reduction='sum' to the loss) and adds
      lambda * sum(w^2) to it, so relative to the data its L2 was 4096x weaker than BARS's mean BCE +
      lambda/2 * sum(w^2). The loss here is the mean BCE (the reduction DeepCTR passes is ignored), with
      l2_reg_embedding = l2_reg_linear = 0.025 (= 0.05 / 2) over the whole 10-d and 1-d tables, as BARS;
    - the initialisation: DeepCTR draws its MLP weights from N(0, init_std) and leaves biases at PyTorch's
      default; BARS and we use Xavier-normal weights and zero biases. Embeddings: N(0, 1e-4) on all sides;
    - gradient clipping: the gradient norm is clipped to 10 before each Adam step, as BARS does.
    """
    import copy

    import numpy as np
    import polars as pl
    import torch

    from recsys.metrics import auc, logloss

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    prepared = _prepared_frappe()
    schema = prepared.schema()
    names = [f.name for f in schema.sparse]
    frames = {s: pl.read_parquet(prepared.split_path(s)) for s in ("train", "valid", "test")}
    inputs = {s: {n: f[n].to_numpy() for n in names} for s, f in frames.items()}
    labels = {s: f[schema.label.name].to_numpy().astype(np.float32) for s, f in frames.items()}
    model = deepctr_deepfm(schema, args.seed)
    if args.precision == "bf16":
        autocast_forward(model)

    def predict(split: str) -> torch.Tensor:
        return torch.from_numpy(model.predict(inputs[split], batch_size=16384).ravel())

    best_auc, best_state, best_elapsed, best_epoch, stale, train_seconds, epochs = -1.0, None, None, None, 0, 0.0, 0
    start = time.perf_counter()
    for epoch in range(args.max_epochs):
        t0 = time.perf_counter()
        model.fit(inputs["train"], labels["train"], batch_size=4096, epochs=1, verbose=0, shuffle=True)
        train_seconds += time.perf_counter() - t0
        epochs += 1
        val_auc = auc(predict("valid"), torch.from_numpy(labels["valid"]))
        if val_auc > best_auc + 1e-6:
            best_auc, best_state, best_epoch, stale = val_auc, copy.deepcopy(model.state_dict()), epoch, 0
            best_elapsed = time.perf_counter() - start
        else:
            stale += 1
            for group in model.optim.param_groups:
                group["lr"] = max(group["lr"] * 0.1, 1e-6)
            if stale >= 2:
                break
    model.load_state_dict(best_state)
    scores = predict("test").double().clamp(1e-7, 1 - 1e-7)
    return {"library": "DeepCTR-Torch", "model": "DeepFM", "precision": args.precision,
            "val_auc": best_auc, "test_auc": auc(scores, torch.from_numpy(labels["test"])),
            "test_logloss": logloss(torch.logit(scores), torch.from_numpy(labels["test"])), "epochs": epochs,
            "best_epoch": best_epoch, "train_samples_per_second": len(labels["train"]) * epochs / train_seconds,
            "time_to_best_seconds": best_elapsed, "train_seconds": train_seconds,
            "num_parameters": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads()}


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.commands.train import train
    from recsys.config import compose_train_config

    out = Path(args.out) / f"ours_{args.model}_{args.precision}_{args.tag}"
    overrides = [f"experiment={args.model}_frappe_x1", f"paths.output_dir={out}", "trainer.enable_progress_bar=false",
                 f"trainer.max_epochs={args.max_epochs}", f"seed={args.seed}", f"num_threads={args.threads}"]
    if args.precision == "bf16":
        overrides.append("trainer.precision=bf16-mixed")
    m = train(compose_train_config(overrides), out)
    return {"library": "recsys-zoo", "model": {"finalmlp": "FinalMLP", "deepfm": "DeepFM"}[args.model],
            "precision": args.precision, "val_auc": m["val"]["auc"], "test_auc": m["test"]["auc"],
            "test_logloss": m["test"]["logloss"], "epochs": m["epochs"], "best_epoch": m["best_epoch"],
            "train_samples_per_second": m["train_samples_per_second"], "time_to_best_seconds": m["time_to_best_seconds"],
            "train_seconds": m["train_seconds"], "num_parameters": m["num_parameters"],
            "torch_threads": m["environment"]["torch_threads"]}


@dataclass(frozen=True)
class Contender:
    library: str  # "ours", "deepctr" or "fuxictr"
    model: str  # "deepfm" or "finalmlp"
    precision: str  # "fp32" or "bf16"
    # A peer run with glibc told to keep freed memory, as `recsys train` does for ours (recsys/allocator.py).
    retains_freed_memory: bool = False

    @property
    def key(self) -> str:
        return f"{self.library}-{self.model}-{self.precision}" + ("-retain" if self.retains_freed_memory else "")

    @property
    def label(self) -> str:
        name = {"deepfm": "DeepFM", "finalmlp": "FinalMLP"}[self.model]
        if self.retains_freed_memory:
            return f"{LIBRARY[self.library]} {name} (glibc keeps freed memory, as ours)"
        if self.precision == "fp32":
            return f"{LIBRARY[self.library]} {name}"
        return f"{LIBRARY[self.library]} {name} ({'bf16-mixed' if self.library == 'ours' else 'bf16 autocast'})"


# What recsys.allocator.retain_freed_memory sets, as glibc tunables for a process that is not ours.
GLIBC_RETAIN_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
RETAIN_NOTE = ("Ours keeps freed memory mapped for reuse (recsys/allocator.py, on by default in `recsys train`); "
               "the peers run with glibc's default malloc.")
RETAIN_PEERS_NOTE = (f"Each peer with GLIBC_TUNABLES={GLIBC_RETAIN_TUNABLES} in its environment: the same malloc "
                     "setting recsys/allocator.py makes for ours.")

BF16_NOTE = ("Ours with trainer.precision=bf16-mixed (Lightning's torch.autocast on CPU); each peer's forward pass "
             "under torch.autocast('cpu', bfloat16) while it trains, its loss, backward pass and optimiser step outside "
             "autocast as ours, its evaluation in fp32 (their prediction paths convert to numpy, which has no bfloat16).")


@dataclass
class Plan:
    contenders: list[Contender]
    # (title, note, [(ours, peer)]): one table per group; the first is like for like.
    groups: list[tuple[str, str, list[tuple[Contender, Contender | None]]]] = field(default_factory=list)


def plan(peers: list[str], finalmlp: bool, bf16: bool, peer_variants: bool = True, fp32: bool = True,
         peers_retain_freed_memory: bool = False) -> Plan:
    """The contenders, in the order of a round, and the comparisons the tables show. Without
    `peer_variants`, the peers run DeepFM in fp32 only: our FinalMLP is then compared with DeepCTR-Torch's
    DeepFM alone, and our bf16 run is shown without a ratio. Without `fp32` (and with `bf16`), only the bf16
    contenders run: the bf16 table alone, like for like with the peers under autocast. With
    `peers_retain_freed_memory`, each peer also runs DeepFM in fp32 with glibc's malloc set as ours
    (GLIBC_TUNABLES in its environment), in a table of its own: how much of the ratio is the allocator."""
    if not fp32:
        if not bf16 or finalmlp or not peer_variants:
            raise SystemExit("bench throughput: --bf16-only needs --precision bf16-mixed and peer variants, and no --finalmlp")
        ours_bf16 = Contender("ours", "deepfm", "bf16")
        pairs = [(ours_bf16, Contender(p, "deepfm", "bf16")) for p in peers]
        return Plan([ours_bf16] + [peer for _, peer in pairs],
                    [("Like for like: DeepFM against DeepFM, all under bf16 autocast", BF16_NOTE, pairs)])
    ours = Contender("ours", "deepfm", "fp32")
    contenders = [ours] + [Contender(p, "deepfm", "fp32") for p in peers]
    groups = [("Like for like: DeepFM against DeepFM, all fp32", RETAIN_NOTE, [(ours, Contender(p, "deepfm", "fp32")) for p in peers])]
    if peers_retain_freed_memory:
        retained = [Contender(p, "deepfm", "fp32", retains_freed_memory=True) for p in peers]
        contenders += retained
        groups.append(("DeepFM, fp32, the peers also with glibc keeping freed memory", RETAIN_PEERS_NOTE,
                       [(ours, peer) for peer in retained]))
    if finalmlp:
        ours_final = Contender("ours", "finalmlp", "fp32")
        contenders.append(ours_final)
        pairs = [(ours_final, Contender("deepctr", "deepfm", "fp32"))] if "deepctr" in peers else []
        if "fuxictr" in peers and peer_variants:
            contenders.append(Contender("fuxictr", "finalmlp", "fp32"))
            pairs.append((ours_final, Contender("fuxictr", "finalmlp", "fp32")))
        groups.append(("FinalMLP, fp32", "Against DeepCTR-Torch's DeepFM this is NOT like for like: a different "
                       "architecture, with about 40% of DeepFM's MLP multiply-adds per sample (DeepCTR-Torch has no "
                       "FinalMLP). Against FuxiCTR's FinalMLP it is.", pairs or [(ours_final, None)]))
    if bf16:
        ours_bf16 = Contender("ours", "deepfm", "bf16")
        contenders.append(ours_bf16)
        pairs = []
        for p in peers if peer_variants else []:
            contenders.append(Contender(p, "deepfm", "bf16"))
            pairs.append((ours_bf16, Contender(p, "deepfm", "bf16")))
        note = BF16_NOTE if pairs else (
                "Ours with trainer.precision=bf16-mixed (Lightning's torch.autocast on CPU). No peer ran under bf16 "
                "here, so this row has no ratio: set against an fp32 peer it would not compare like with like.")
        groups.append(("DeepFM in bf16", note, pairs or [(ours_bf16, None)]))
    return Plan(contenders, groups)


def command(c: Contender, args: argparse.Namespace, out: Path, tag: str) -> list[str]:
    common = ["--max-epochs", str(args.max_epochs), "--seed", str(args.seed), "--threads", str(args.threads or 0)]
    if c.library == "fuxictr":
        return [args.peer_python, str(PEER_SCRIPT), "--model", {"deepfm": "DeepFM", "finalmlp": "FinalMLP"}[c.model],
                "--data", str(frappe_dir()), "--work", str(fuxictr_work(args, out)), "--model-zoo", args.fuxictr_model_zoo,
                "--precision", c.precision, "--loader", args.fuxictr_loader, *common]
    worker = "ours" if c.library == "ours" else "peer_deepctr"
    return [sys.executable, "-m", "recsys.bench.throughput", worker, "--model", c.model, "--precision", c.precision,
            "--out", str(out), "--tag", tag, *common]


def fuxictr_work(args: argparse.Namespace, out: Path) -> Path:
    """Where FuxiCTR keeps its built dataset and checkpoints: --fuxictr-work, or under the output folder."""
    return Path(args.fuxictr_work) if args.fuxictr_work else out / "fuxictr-work"


def frappe_dir() -> Path:
    return Path(os.environ["RECSYS_DATA_DIR"]) / "frappe_x1"


def _in_subprocess(argv: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One contender in a fresh interpreter (neither side inherits the other's caches or threads), with `env`
    added to ours; its stderr goes to `log`, its result is the last stdout line that is a JSON object."""
    with log.open("w") as err:
        err.write(" ".join(argv) + "\n")
        err.flush()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark step failed (exit {proc.returncode}): {' '.join(argv)}\nsee {log}:\n"
                           f"{log.read_text()[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------ summary
def _median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarise(results: dict[str, list[dict[str, Any]]], the_plan: Plan) -> dict[str, Any]:
    """Per contender: median and min-max over rounds of every timing and metric. Per compared pair: the
    median and min-max of the per-round ratios (ours / peer for samples/s, peer / ours for time to best),
    and whether ours reached `2x` in the median."""
    per = {}
    for c in the_plan.contenders:
        runs = results.get(c.key, [])
        if not runs:
            continue
        stats = {"label": c.label, "library": c.library, "model": c.model, "precision": c.precision, "rounds": len(runs)}
        for key in ("train_samples_per_second", "time_to_best_seconds", "test_auc", "val_auc", "test_logloss", "epochs",
                    "best_epoch"):
            values = [float(r[key]) for r in runs if r.get(key) is not None]
            if values:
                stats[key] = dict(zip(("median", "min", "max"), _median_range(values)))
        per[c.key] = stats
    comparisons = []
    for title, note, pairs in the_plan.groups:
        for ours, peer in pairs:
            entry: dict[str, Any] = {"group": title, "ours": ours.key, "peer": peer.key if peer else None}
            if peer is not None and results.get(ours.key) and results.get(peer.key):
                rounds = list(zip(results[ours.key], results[peer.key]))
                speed = [o["train_samples_per_second"] / p["train_samples_per_second"] for o, p in rounds]
                entry["speedup"] = dict(zip(("median", "min", "max"), _median_range(speed)))
                to_best = [p["time_to_best_seconds"] / o["time_to_best_seconds"] for o, p in rounds]
                entry["time_to_best_speedup"] = dict(zip(("median", "min", "max"), _median_range(to_best)))
                entry["test_auc_difference"] = per[ours.key]["test_auc"]["median"] - per[peer.key]["test_auc"]["median"]
            comparisons.append(entry)
    return {"contenders": per, "comparisons": comparisons}


def _cell(stat: dict[str, float] | None, fmt: str) -> str:
    if not stat:
        return "—"
    return f"{stat['median']:{fmt}} ({stat['min']:{fmt}}–{stat['max']:{fmt}})"


def markdown(summary: dict[str, Any], the_plan: Plan, meta: dict[str, Any]) -> str:
    per = summary["contenders"]
    by_pair = {(c["ours"], c["peer"]): c for c in summary["comparisons"]}
    lines = [f"{meta['rounds']} rounds, contenders in turns within each round ({', '.join(c.label for c in the_plan.contenders)}); "
             "median over rounds, (min–max) beside it; ratios are medians of the per-round ratios. "
             f"Load average (1 min) over the run: {meta['load_min']:.2f}–{meta['load_max']:.2f} on {meta['cpus']} CPUs; "
             f"torch threads per contender: {meta['threads']}."]
    header = ("| implementation | train samples/s | recsys-zoo's samples/s over it | time to best val AUC (s) | "
              "recsys-zoo's time to best, faster by | epochs (best at) | best val AUC | test AUC |")
    for title, note, pairs in the_plan.groups:
        lines += ["", f"### {title}", ""] + ([note, ""] if note else []) + [header, "|---|---|---|---|---|---|---|---|"]
        shown = []
        for ours, peer in pairs:
            for c in (ours, peer):
                if c is not None and c.key not in shown:
                    shown.append(c.key)
        for key in shown:
            stats = per.get(key)
            if stats is None:
                continue
            comparison = next((by_pair[(o.key, key)] for o, p in pairs if p is not None and p.key == key
                               and (o.key, key) in by_pair), None)
            speed = _cell(comparison.get("speedup"), ".2f") + "x" if comparison and "speedup" in comparison else "—"
            to_best = (_cell(comparison.get("time_to_best_speedup"), ".2f") + "x"
                       if comparison and "time_to_best_speedup" in comparison else "—")
            epochs = stats.get("epochs", {}).get("median")
            best = stats.get("best_epoch", {}).get("median")
            epochs_cell = "—" if epochs is None else f"{epochs:.0f}" + ("" if best is None else f" ({best + 1:.0f})")
            lines.append(f"| {stats['label']} | {_cell(stats.get('train_samples_per_second'), ',.0f')} | {speed} | "
                         f"{_cell(stats.get('time_to_best_seconds'), '.1f')} | {to_best} | "
                         f"{epochs_cell} | {_cell(stats.get('val_auc'), '.4f')} | "
                         f"{_cell(stats.get('test_auc'), '.4f')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ profile
def profile_step(args: argparse.Namespace) -> dict[str, Any]:
    """Where one of our DeepFM training steps (forward, BCE, whole-table L2, backward, clip, Adam; a real
    Frappe_x1 batch of 4096) spends its time, against what these cores can do: the GFLOP/s of plain GEMMs
    of the step's own matrix-product shapes through the step's own kernels (oneDNN, mm), measured in the
    same process, in turns with the step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from recsys.allocator import retain_freed_memory
    from recsys.config import build_datamodule, build_model, build_task, compose_train_config
    from recsys.kernels.linear import product as linear_product

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_train_config(["experiment=deepfm_frappe_x1", f"seed={args.seed}"])
    if cfg.retain_freed_memory:  # as `recsys train` does
        retain_freed_memory()
    datamodule = build_datamodule(cfg, _prepared_frappe())
    datamodule.setup()
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, datamodule.schema).train()
    task = build_task(cfg, model)
    optimizer = task.configure_optimizers()["optimizer"]
    batch = next(iter(datamodule.train_dataloader()))
    rows = len(batch)

    def step() -> None:  # CTRTask.training_step's computation, without its logging call outside a trainer
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label) + task.regularization(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    # The MLP's matrix products, each through the kernel the step uses (recsys/kernels/linear.py): forward
    # x W^T and the input gradient dY W through oneDNN, the weight gradient dY^T x through mm.
    gemms = []
    for linear in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
        n, k = linear.weight.shape
        gemms += [(linear_product, torch.randn(rows, k), torch.randn(n, k)),
                  (linear_product, torch.randn(rows, n), torch.randn(n, k).t()),
                  (torch.mm, torch.randn(n, rows), torch.randn(rows, k))]
    gemm_flops = sum(2 * a.shape[0] * a.shape[1] * (b.shape[0] if f is linear_product else b.shape[1]) for f, a, b in gemms)

    def plain_gemms() -> None:
        for f, a, b in gemms:
            f(a, b)

    for _ in range(args.warmup):
        step()
        plain_gemms()
    # Wall time, and the process's CPU time: on a machine shared with other jobs the wall time of a step
    # includes waiting for a core, its CPU time does not (with one thread it is the step's compute).
    step_times, gemm_times, step_cpu, gemm_cpu = [], [], [], []
    for _ in range(args.steps):  # in turns: the step, then the same shapes' plain GEMMs
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        step_times.append(time.perf_counter() - t0)
        step_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        plain_gemms()
        gemm_times.append(time.perf_counter() - t0)
        gemm_cpu.append(time.process_time() - c0)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        for _ in range(args.profiled_steps):
            step()
    events = prof.key_averages()
    ops = {e.key: e.self_cpu_time_total / 1000 / args.profiled_steps for e in events}
    matmul_ops = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", ONEDNN_LINEAR)
    # What the profiler counts for the step's matrix products: the plain GEMMs above must be the same work.
    # It counts no FLOPs for oneDNN's linear: those come from its recorded shapes ([M, K] x [N, K]^T).
    profiled_matmul_flops = (
        sum(e.flops for e in events if e.key in matmul_ops and e.flops)
        + sum(2 * e.input_shapes[0][0] * e.input_shapes[0][1] * e.input_shapes[1][0] * e.count
              for e in prof.key_averages(group_by_input_shape=True) if e.key == ONEDNN_LINEAR)
    ) / args.profiled_steps
    profiled_ms = sum(ops.values())
    matmul_ms = sum(ms for name, ms in ops.items() if name in matmul_ops)
    step_ms = statistics.median(step_times) * 1000
    plain_ms = statistics.median(gemm_times) * 1000
    others = sorted(((n, ms) for n, ms in ops.items() if n not in matmul_ops), key=lambda x: -x[1])
    return {
        "batch": rows, "threads": torch.get_num_threads(), "steps": args.steps, "step_ms": step_ms, "step_ms_min": min(step_times) * 1000,
        "samples_per_second": rows / step_ms * 1000,
        "gemm_gflop_per_step": gemm_flops / 1e9, "profiled_matmul_gflop_per_step": profiled_matmul_flops / 1e9,
        "plain_gemm_ms": plain_ms, "plain_gemm_gflops": gemm_flops / plain_ms / 1e6,
        "plain_gemm_gflops_best": gemm_flops / min(gemm_times) / 1e9,
        # Profiled shares, scaled to the median step: the profiler's own overhead spreads evenly.
        "step_matmul_ms": matmul_ms * step_ms / profiled_ms, "step_other_ms": (profiled_ms - matmul_ms) * step_ms / profiled_ms,
        "step_matmul_gflops": gemm_flops / (matmul_ms * step_ms / profiled_ms) / 1e6,
        "limit_samples_per_second_gemm_only": rows / plain_ms * 1000,
        "step_cpu_ms": statistics.median(step_cpu) * 1000, "plain_gemm_cpu_ms": statistics.median(gemm_cpu) * 1000,
        "plain_gemm_gflops_cpu": gemm_flops / statistics.median(gemm_cpu) / 1e9,
        "top_other_ops_ms": [(n, ms * step_ms / profiled_ms) for n, ms in others[:10]],
    }


def profile_markdown(p: dict[str, Any], peers: dict[str, float] | None = None) -> str:
    """The profile as text; `peers` ({label: median train samples/s}) adds what 2x each of them would need."""
    share = p["step_matmul_ms"] / p["step_ms"]
    lines = [
        f"One recsys-zoo DeepFM training step (batch {p['batch']}, {p['threads']} thread(s); forward, BCE, whole-table L2, "
        f"backward, gradient clipping, Adam), median of {p['steps']} timed steps: "
        f"**{p['step_ms']:.1f} ms** wall ({p['samples_per_second']:,.0f} samples/s), {p['step_cpu_ms']:.1f} ms of CPU time.",
        "",
        "| part of the step (profiler, scaled to the median step) | ms | share | note |",
        "|---|---|---|---|",
        f"| matrix products (mm, addmm, oneDNN linear) | {p['step_matmul_ms']:.1f} | {share:.0%} | {p['gemm_gflop_per_step']:.2f} GFLOP: "
        f"{p['step_matmul_gflops']:.0f} GFLOP/s |",
        f"| everything else | {p['step_other_ms']:.1f} | {1 - share:.0%} | largest below |",
    ]
    lines += [f"| · {name} | {ms:.1f} | {ms / p['step_ms']:.0%} | |" for name, ms in p["top_other_ops_ms"]]
    gemm_only = p["limit_samples_per_second_gemm_only"]
    lines += [
        "",
        f"The step's own GEMM shapes alone (forward x W^T, backward dY W and dY^T x of every Linear; the same FLOPs as the "
        f"profiler counts for the step's products), timed in turns with the steps: {p['plain_gemm_ms']:.1f} ms wall, "
        f"**{p['plain_gemm_gflops']:.0f} GFLOP/s** (best {p['plain_gemm_gflops_best']:.0f}); {p['plain_gemm_cpu_ms']:.1f} ms "
        f"of CPU time ({p['plain_gemm_gflops_cpu']:.0f} GFLOP/s). A step that did nothing but those products would run at "
        f"{gemm_only:,.0f} samples/s: the fp32 ceiling of these cores for this model, "
        f"{gemm_only / p['samples_per_second']:.2f}x our measured step.",
    ]
    for label, speed in (peers or {}).items():
        verdict = "within" if 2 * speed < gemm_only else "beyond"
        lines.append(f"- 2x {label}'s median ({speed:,.0f} samples/s in the table) is {2 * speed:,.0f} samples/s: "
                     f"{verdict} that ceiling.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command
def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from recsys.bench.zoo import frappe_available
    from recsys.features.atomic import write_json_atomic

    if not frappe_available():
        raise SystemExit("bench throughput needs Frappe_x1: set RECSYS_DATA_DIR to the folder holding frappe_x1/")
    peers = list(dict.fromkeys(args.peer or ["deepctr"]))
    if "fuxictr" in peers:
        if not args.peer_python or not Path(args.peer_python).exists():
            raise SystemExit("--peer fuxictr needs --peer-python: the interpreter of a FuxiCTR 2.3.10 environment "
                             "(docs/peers.md says how to make one)")
        if not args.fuxictr_model_zoo or not Path(args.fuxictr_model_zoo).is_dir():
            raise SystemExit("--peer fuxictr needs --fuxictr-model-zoo: the model_zoo/ folder of a reczoo/FuxiCTR clone "
                             "(docs/peers.md)")
    the_plan = plan(peers, args.finalmlp, args.precision == "bf16-mixed", args.peer_variants, fp32=not args.bf16_only,
                    peers_retain_freed_memory=args.peers_retain_freed_memory)
    out = Path(args.out or f"outputs/bench/throughput-{time.strftime('%Y%m%d-%H%M%S')}")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    _prepared_frappe()  # fit our features once, outside the timings
    if "fuxictr" in peers:  # FuxiCTR's own preprocessing, once, outside the timings
        prep = [args.peer_python, str(PEER_SCRIPT), "--prepare-only", "--data", str(frappe_dir()),
                "--work", str(fuxictr_work(args, out)), "--model-zoo", args.fuxictr_model_zoo]
        _in_subprocess(prep, out / "logs" / "fuxictr-prepare.log")
    results: dict[str, list[dict[str, Any]]] = {c.key: [] for c in the_plan.contenders}
    loads = [os.getloadavg()[0]]
    steps = [(r, c) for r in range(args.repeats) for c in the_plan.contenders]
    for round_index, c in tqdm(steps, desc="throughput (in turns)", unit="run"):
        tag = f"round{round_index + 1}"
        env = {"GLIBC_TUNABLES": GLIBC_RETAIN_TUNABLES} if c.retains_freed_memory else None
        result = _in_subprocess(command(c, args, out, tag), out / "logs" / f"{c.key}-{tag}.log", env)
        result.update(round=round_index + 1, label=c.label, load_after=os.getloadavg()[0])
        results[c.key].append(result)
        loads.append(os.getloadavg()[0])
        write_json_atomic(out / "runs.json", results)  # what has finished, if a later run fails
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "fn"},
        "meta": {"rounds": args.repeats, "load_min": min(loads), "load_max": max(loads), "cpus": os.cpu_count(),
                 "threads": args.threads or "torch default"},
        "runs": results,
    }
    report.update(summarise(results, the_plan))
    text = markdown(report, the_plan, report["meta"])
    if args.profile:
        profile = _in_subprocess([sys.executable, "-m", "recsys.bench.throughput", "profile", "--threads", str(args.threads or 0),
                                  "--seed", str(args.seed)], out / "logs" / "profile.log")
        report["profile"] = profile
        peers_fp32 = {report["contenders"][k]["label"]: report["contenders"][k]["train_samples_per_second"]["median"]
                      for k in report["contenders"] if k.endswith("-deepfm-fp32") and not k.startswith("ours")}
        text += "\n\n### Where our fp32 DeepFM step goes\n\n" + profile_markdown(profile, peers_fp32)
    write_json_atomic(out / "throughput.json", report)
    (out / "throughput.md").write_text(text + "\n")
    print(text)
    return report


def add_parser(sub: argparse._SubParsersAction) -> None:
    thr = sub.add_parser("throughput", help="our training throughput against DeepCTR-Torch and FuxiCTR on Frappe_x1, in turns")
    thr.add_argument("--repeats", type=int, default=3, help="rounds; each contender runs once per round, in turns")
    thr.add_argument("--peer", action="append", choices=PEERS,
                     help="a peer library (repeatable); default deepctr. fuxictr needs --peer-python and --fuxictr-model-zoo")
    thr.add_argument("--peer-python", default=os.environ.get("FUXICTR_PYTHON"),
                     help="the FuxiCTR environment's python (default $FUXICTR_PYTHON)")
    thr.add_argument("--fuxictr-model-zoo", default=os.environ.get("FUXICTR_MODEL_ZOO"),
                     help="model_zoo/ of a reczoo/FuxiCTR clone (default $FUXICTR_MODEL_ZOO)")
    thr.add_argument("--fuxictr-work", default=None,
                     help="FuxiCTR's data_root/model_root (default OUT/fuxictr-work); reuse one to skip its preprocessing")
    thr.add_argument("--fuxictr-loader", default="ray", choices=["ray", "memory"],
                     help="ray: FuxiCTR's shipped loader; memory: whole splits as tensors (its model and loop only)")
    thr.add_argument("--finalmlp", action="store_true", help="also FinalMLP (ours, and FuxiCTR's with --peer fuxictr)")
    thr.add_argument("--precision", default=None, choices=["bf16-mixed"],
                     help="also DeepFM in bf16: ours bf16-mixed, each peer under bf16 autocast")
    thr.add_argument("--bf16-only", action="store_true",
                     help="with --precision bf16-mixed: only the bf16 contenders (ours and each peer under autocast)")
    thr.add_argument("--peers-retain-freed-memory", action="store_true",
                     help="also run each peer's fp32 DeepFM with glibc keeping freed memory, as ours does (a table of its own)")
    thr.add_argument("--peer-variants", action=argparse.BooleanOptionalAction, default=True,
                     help="peers also run FinalMLP (FuxiCTR) and bf16 autocast; --no-peer-variants: DeepFM fp32 only "
                          "(our bf16 row is then shown without a ratio)")
    thr.add_argument("--profile", action="store_true", help="also profile one of our fp32 DeepFM steps against plain GEMMs")
    thr.add_argument("--max-epochs", type=int, default=100)
    thr.add_argument("--seed", type=int, default=2021)
    thr.add_argument("--threads", type=int, default=0, help="torch threads for every contender (0: torch's default)")
    thr.add_argument("--out", default=None)
    thr.set_defaults(fn=run_throughput)


def _worker(argv: list[str]) -> None:
    """One contender (or the profile) in this interpreter; prints its result as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m recsys.bench.throughput")
    sub = parser.add_subparsers(dest="contender", required=True)
    for name, fn in (("ours", run_ours), ("peer_deepctr", run_peer_deepctr)):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--tag", default="run")
        p.add_argument("--max-epochs", type=int, default=100)
        p.add_argument("--seed", type=int, default=2021)
        p.add_argument("--model", default="deepfm", choices=["deepfm", "finalmlp"])
        p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
        p.add_argument("--threads", type=int, default=0)
        p.set_defaults(fn=fn)
    p = sub.add_parser("profile")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profiled-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(fn=profile_step)
    args = parser.parse_args(argv)
    print(json.dumps(args.fn(args)), flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1:])
