"""`recsys bench zoo`: train the zoo's CTR models on one dataset and print a leaderboard (the README's
main job), with the dataset's baselines in it. Real data comes from RECSYS_DATA_DIR (frappe_x1/); without it
the job falls back to the clearly labelled synthetic dataset, so a first run works anywhere. `--data NAME
--config-dir DIR` runs the zoo on a dataset of your own (docs/data.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ZOO_MODELS = ("lr", "fm", "deepfm", "dcnv2", "autoint", "finalmlp")


def frappe_available() -> bool:
    root = os.environ.get("RECSYS_DATA_DIR")
    return bool(root) and all((Path(root) / "frappe_x1" / f"{s}.csv").exists() for s in ("train", "valid", "test"))


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def run_zoo(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pytorch_lightning.callbacks import TQDMProgressBar
    from tqdm.auto import tqdm

    from recsys.commands.cli import user_error_line
    from recsys.commands.train import train
    from recsys.config import compose_train_config
    from recsys.features.atomic import write_json_atomic

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
    rows, failed = [], []
    # What each run says (the data summary and its warnings, the best baseline, the result), printed above the bars.
    handler = _TqdmHandler()
    train_log = logging.getLogger("recsys.commands.train")
    if not logging.getLogger().handlers:  # not under a configured logger (as Hydra's train is)
        train_log.addHandler(handler)
        train_log.setLevel(logging.INFO)
    outer = tqdm(models, desc=f"zoo on {data}", unit="model")
    for i, model in enumerate(outer):
        outer.set_postfix_str(model)
        # frappe_x1 runs its BARS experiments (the published settings); any other data the model's defaults.
        overrides = [f"experiment={model}_frappe_x1"] if data == "frappe_x1" else [f"model={model}", f"data={data}"]
        overrides += [f"paths.output_dir={out / model}", "trainer.enable_progress_bar=true", *args.overrides]
        if args.max_epochs:
            overrides.append(f"trainer.max_epochs={args.max_epochs}")
        # Each epoch's bar (with its ETA) sits under the bar over the models, and is cleared when done.
        # Not a terminal (a log file): a line every 50 steps rather than at every step.
        inner = TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 50, process_position=1, leave=False)
        cfg = compose_train_config(overrides, args.config_dir)  # a config that does not compose stops the zoo
        try:
            rows.append(train(cfg, out / model, extra_callbacks=[inner], data_summary=(i == 0)))
        except Exception as err:  # a user error (a setting this model cannot take on this data) costs one model, not the zoo
            line = user_error_line(err)
            if line is None:
                raise
            failed.append(model)
            write_json_atomic(out / model / "error.json", {"error": f"{type(err).__name__}: {line}"})
            tqdm.write(f"{model} FAILED: {line}")
    outer.close()
    train_log.removeHandler(handler)
    # The same collector and tables as `recsys report`, so the zoo also gets the HTML report (baselines included).
    from recsys.commands.report import markdown, report

    frame, _ = report(out, out / "report")
    title = f"Leaderboard on {data}" + (" (SYNTHETIC data)" if any(r.get("synthetic_data") for r in rows) else "")
    table = markdown(frame)
    (out / "leaderboard.md").write_text(f"# {title}\n\n{table}")
    print(f"\n{title}\n{table}\nwritten to {out / 'leaderboard.md'} and {out / 'report' / 'report.html'}")
    if failed:
        raise SystemExit(f"{len(failed)} model(s) failed: {', '.join(failed)} (their error.json under {out})")
    return rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="train the zoo on one dataset and print a leaderboard, baselines included",
                         description="Train the zoo's CTR models on one dataset, one after the other, and write a leaderboard "
                                     "(Markdown and HTML, with the dataset's baselines) under --out.")
    zoo.add_argument("--data", default="auto",
                     help="a data config name: frappe_x1 (its BARS experiments), synthetic, any other config, or one of yours "
                          "with --config-dir; default auto: frappe_x1 when RECSYS_DATA_DIR has it, else synthetic")
    zoo.add_argument("--config-dir", default=None, help="a folder of your own config groups (data/NAME.yaml), as for recsys train")
    zoo.add_argument("--models", default=",".join(ZOO_MODELS), help=f"comma-separated, from {','.join(ZOO_MODELS)}")
    zoo.add_argument("--max-epochs", type=int, default=None, help="cap on epochs (default: the experiment's, 100)")
    zoo.add_argument("--out", default=None, help="default outputs/zoo/<data>-<time>")
    zoo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides for every run, e.g. data.batch_size=1024")
    zoo.set_defaults(fn=run_zoo)
