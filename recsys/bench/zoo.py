"""`recsys bench zoo`: train the zoo's CTR models on one dataset and print a leaderboard (the README's
main job). Real data comes from RECSYS_DATA_DIR (frappe_x1/); without it the job falls back to the clearly
labelled synthetic dataset, so a first run works anywhere."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

ZOO_MODELS = ("lr", "fm", "deepfm", "dcnv2", "autoint", "finalmlp")


def frappe_available() -> bool:
    root = os.environ.get("RECSYS_DATA_DIR")
    return bool(root) and all((Path(root) / "frappe_x1" / f"{s}.csv").exists() for s in ("train", "valid", "test"))


def run_zoo(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from recsys.commands.train import train
    from recsys.config import compose_train_config
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
    from recsys.commands.report import markdown, report

    frame, _ = report(out, out / "report")
    title = f"Leaderboard on {data}" + (" (SYNTHETIC data)" if data == "synthetic" else "")
    table = markdown(frame)
    (out / "leaderboard.md").write_text(f"# {title}\n\n{table}")
    print(f"\n{title}\n{table}\nwritten to {out / 'leaderboard.md'} and {out / 'report' / 'report.html'}")
    return rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="train the zoo on one dataset and print a leaderboard")
    zoo.add_argument("--data", default="auto", choices=["auto", "frappe_x1", "synthetic"])
    zoo.add_argument("--models", default=",".join(ZOO_MODELS))
    zoo.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: the experiment's, 100)")
    zoo.add_argument("--out", default=None)
    zoo.set_defaults(fn=run_zoo)
