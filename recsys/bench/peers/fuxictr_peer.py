"""FuxiCTR 2.3.10 on Frappe_x1 with the BARS settings: one contender of `recsys bench throughput`.

Run by FuxiCTR's own interpreter (it needs polars < 2 and Ray), never imported by recsys-zoo; it imports
only FuxiCTR, its stack (torch, Ray) and the standard library. docs/peers.md says how to build that
environment and where the model code (`model_zoo/`, not in the wheel) comes from.

    PEER_PYTHON fuxictr_peer.py --model DeepFM --data RAW_FRAPPE_DIR --work DIR --model-zoo ZOO
        [--max-epochs 100] [--seed 2021] [--precision fp32|bf16] [--loader ray|memory] [--threads N]
    PEER_PYTHON fuxictr_peer.py --prepare-only --data RAW_FRAPPE_DIR --work DIR --model-zoo ZOO

Prints one JSON line (the last line of stdout): the same fields as the other contenders. Training time
excludes FuxiCTR's evaluation passes (timed around `eval_step`, which also saves the best checkpoint);
time to best is the wall time from the start of `fit` to the end of the evaluation that found the best
validation AUC, evaluations included. FuxiCTR's CSV -> Parquet preprocessing runs once, before any timing
(`--prepare-only`, or on the first run), and is reported as `prep_seconds`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import time

FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
# BARS: ranking/ctr/DeepFM/DeepFM_frappe_x1 (tuner_config_02, expid DeepFM_frappe_x1_001_4ae3a56e) and
# ranking/ctr/FinalMLP/FinalMLP_frappe_x1 (tuner_config_16, expid FinalMLP_frappe_x1_004_e1ab402f).
SHARED = dict(batch_size=4096, embedding_dim=10, embedding_regularizer=0.05, net_regularizer=0, learning_rate=1e-3,
              loss="binary_crossentropy", metrics=["AUC", "logloss"], monitor="AUC", monitor_mode="max",
              optimizer="adam", early_stop_patience=2, save_best_only=True, shuffle=True,
              task="binary_classification", verbose=0, num_workers=3)
MODELS = {
    # model -> (its folder under model_zoo/, its BARS hyper-parameters)
    "DeepFM": (("DeepFM", "DeepFM_torch"),
               dict(hidden_units=[400, 400, 400], hidden_activations="relu", net_dropout=0.2, batch_norm=True)),
    "FinalMLP": (("FinalMLP",),
                 dict(mlp1_hidden_units=[400], mlp1_hidden_activations="relu", mlp1_dropout=0.4, mlp1_batch_norm=True,
                      mlp2_hidden_units=[100], mlp2_hidden_activations="relu", mlp2_dropout=0.4, mlp2_batch_norm=True,
                      use_fs=True, fs_hidden_units=[400], fs1_context=["user"], fs2_context=["item"], num_heads=5)),
}


class InMemoryLoader:
    """A split's columns read once through FuxiCTR's own Parquet loader into tensors, then batches by
    index slices of a torch.randperm each epoch (seeded by FuxiCTR's seed_everything): FuxiCTR's model
    and training loop without Ray Data's per-epoch global shuffle."""

    def __init__(self, feature_map, data_path, split="train", batch_size=32, shuffle=False, **kwargs):  # noqa: ANN001
        import torch
        from fuxictr.pytorch.dataloaders.parquet_dataloader import ParquetDataLoader

        source = ParquetDataLoader(feature_map, data_path, split="test", batch_size=65536, shuffle=False)
        parts = list(source)
        self.data = {c: torch.cat([p[c] for p in parts]) for c in parts[0]}
        self.num_samples = len(next(iter(self.data.values())))
        self.num_blocks = 1
        self.batch_size = batch_size
        self.shuffle = shuffle and split == "train"
        self.num_batches = -(-self.num_samples // batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):  # noqa: ANN204
        import torch

        order = torch.randperm(self.num_samples) if self.shuffle else None
        for i in range(self.num_batches):
            rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {c: (v[order[rows]] if order is not None else v[rows]) for c, v in self.data.items()}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fuxictr_peer.py")
    p.add_argument("--model", default="DeepFM", choices=sorted(MODELS))
    p.add_argument("--data", required=True, help="the raw Frappe_x1 folder (train.csv, valid.csv, test.csv)")
    p.add_argument("--work", required=True, help="FuxiCTR's data_root and model_root go here")
    p.add_argument("--model-zoo", required=True, help="model_zoo/ of a reczoo/FuxiCTR clone (docs/peers.md)")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: each training step under torch.autocast('cpu', bfloat16), evaluation in fp32")
    p.add_argument("--loader", default="ray", choices=["ray", "memory"],
                   help="ray: FuxiCTR's shipped Parquet loader (Ray Data); memory: whole splits as tensors")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--prepare-only", action="store_true", help="build FuxiCTR's dataset and stop")
    return p.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse(argv)
    import ray
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    # Started here, quietly, so Ray's worker logs do not reach stdout (FuxiCTR skips its own ray.init then).
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, num_cpus=os.cpu_count())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    folder, model_params = MODELS[args.model]
    model_dir = os.path.join(args.model_zoo, *folder)
    if not os.path.isfile(os.path.join(model_dir, "src", f"{args.model}.py")):
        raise SystemExit(f"no {args.model} model code under {model_dir}/src: --model-zoo must be the model_zoo/ "
                         "folder of a reczoo/FuxiCTR clone (docs/peers.md)")
    params = dict(SHARED, **model_params)
    params.update(
        model=args.model, model_id=f"{args.model}_frappe_x1", dataset_id="frappe_x1", epochs=args.max_epochs,
        seed=args.seed, gpu=-1, data_root=os.path.join(args.work, "data"), model_root=os.path.join(args.work, "ckpt"),
        data_format="csv", min_categr_count=1,
        train_data=os.path.join(args.data, "train.csv"), valid_data=os.path.join(args.data, "valid.csv"),
        test_data=os.path.join(args.data, "test.csv"),
        feature_cols=[{"active": True, "dtype": "float", "name": FIELDS, "type": "categorical"}],
        label_col={"dtype": "float", "name": "label"},
    )
    seed_everything(seed=args.seed)
    started = time.perf_counter()
    data_dir = os.path.join(params["data_root"], params["dataset_id"])
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(FeatureProcessor(**params), **params)
    prep_seconds = time.perf_counter() - started
    if args.prepare_only:
        return {"prepared": data_dir, "prep_seconds": prep_seconds}
    feature_map = FeatureMap(params["dataset_id"], data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
    if args.loader == "memory":
        params["data_loader"] = InMemoryLoader

    sys.path.insert(0, model_dir)
    model = getattr(importlib.import_module("src"), args.model)(feature_map, **params)
    os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR saves its best checkpoint there but does not create it
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)

    if args.precision == "bf16":
        # The forward pass alone under autocast, while training, as Lightning's bf16-mixed runs ours and as the
        # DeepCTR-Torch peer runs (recsys.bench.throughput.autocast_forward; this file runs in FuxiCTR's own
        # interpreter and cannot import it): loss, backward and optimiser step stay outside.
        forward = model.forward

        def bf16_forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.training):
                return forward(*args, **kwargs)

        model.forward = bf16_forward

    # fit() evaluates inside train_epoch (eval_step after an epoch's last batch): time those apart.
    clock = {"eval_seconds": 0.0, "evaluations": 0, "best": float("-inf"), "best_at": None, "best_epoch": None}
    eval_step = model.eval_step

    def timed_eval_step() -> None:
        t0 = time.perf_counter()
        eval_step()
        clock["eval_seconds"] += time.perf_counter() - t0
        clock["evaluations"] += 1
        if model._best_metric > clock["best"]:
            clock["best"], clock["best_at"] = model._best_metric, time.perf_counter() - start
            clock["best_epoch"] = clock["evaluations"] - 1

    model.eval_step = timed_eval_step
    start = time.perf_counter()
    model.fit(train_gen, validation_data=valid_gen, **params)  # the BARS protocol; restores the best checkpoint
    fit_seconds = time.perf_counter() - start
    train_seconds = fit_seconds - clock["eval_seconds"]
    with contextlib.redirect_stdout(sys.stderr):
        val = model.evaluate(valid_gen)
        test = model.evaluate(RankDataLoader(feature_map, stage="test", **params))
    epochs = clock["evaluations"]
    return {
        "library": "FuxiCTR", "model": args.model, "precision": args.precision, "loader": args.loader,
        "val_auc": float(val["AUC"]), "test_auc": float(test["AUC"]), "test_logloss": float(test["logloss"]),
        "epochs": epochs, "best_epoch": clock["best_epoch"],
        "train_samples_per_second": train_gen.num_samples * epochs / train_seconds,
        "time_to_best_seconds": clock["best_at"], "train_seconds": train_seconds, "eval_seconds": clock["eval_seconds"],
        "prep_seconds": prep_seconds, "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "fuxictr": importlib.import_module("fuxictr.version").__version__,
    }


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps(result), flush=True)
