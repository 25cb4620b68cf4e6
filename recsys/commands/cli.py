"""The `recsys` command.

    recsys train [hydra overrides]        one run (or a sweep with -m), writes metrics.json
    recsys bench zoo [--data ...]         the zoo's models on one dataset, and a leaderboard
    recsys bench throughput [...]         our training speed against DeepCTR-Torch and FuxiCTR, in turns
    recsys bench sequence [...]           SDIM / DIN-long / DARE speed over history lengths
    recsys bench accuracy [--suite ...]   a suite of experiments over seeds (mean ± sd) and its claims
    recsys report RUNS_DIR [...]          leaderboard (CSV, Markdown) and an HTML report of many runs
    recsys export run_dir=DIR out=DIR     ONNX export of a run, with a parity check against PyTorch
    recsys serve EXPORT_DIR [...]         the HTTP scoring endpoint (ONNX Runtime; --backend torch to compare)
    recsys bench serve --run NAME=DIR     load benchmark of the endpoint, ONNX against PyTorch eager
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__
COMMANDS = ("train", "bench", "report", "export", "serve")


def _train_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://recsys.conf", config_name="train")
    def run(cfg: DictConfig) -> float:
        from hydra.types import RunMode

        from recsys.commands.train import train_or_resume

        hydra_cfg = HydraConfig.get()
        sweep_dir = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None
        return train_or_resume(cfg, cfg.paths.output_dir, sweep_dir)

    run()


def _export_main(args: list[str]) -> None:
    """`recsys export run_dir=DIR out=DIR [rows=N] [cache_dir=DIR]`, in the key=value style of `train`."""
    allowed = {"run_dir", "out", "rows", "cache_dir"}
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = [a for a in args if "=" not in a or a.split("=", 1)[0] not in allowed]
    if unknown or not {"run_dir", "out"} <= options.keys():
        print(f"usage: recsys export run_dir=DIR out=EXPORT_DIR [rows=N] [cache_dir=DIR] (not understood: {unknown})", file=sys.stderr)
        sys.exit(2)
    import logging

    from recsys.serving.export import PARITY_ROWS, ExportError, export_run
    from recsys.serving.runs import RunError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        meta = export_run(options["run_dir"], options["out"], rows=int(options.get("rows", PARITY_ROWS)), cache_dir=options.get("cache_dir"))
    except (ExportError, RunError) as err:
        print(f"recsys export: refused: {err}", file=sys.stderr)
        sys.exit(1)
    p = meta["parity"]
    print(f"exported {meta['model']} ({meta['version']}) to {options['out']}: {p['rows']} validation rows, "
          f"max |onnx - torch| {p['max_abs_diff']:.2g}, AUC torch {p.get('auc_torch', float('nan')):.6f} onnx {p.get('auc_onnx', float('nan')):.6f}")


def _serve_main(args: list[str]) -> None:
    import argparse

    from recsys.serving.app import Limits, serve

    defaults = Limits()
    parser = argparse.ArgumentParser(prog="recsys serve", description="HTTP scoring endpoint on an export folder")
    parser.add_argument("source", help="an export folder (recsys export); a run folder with --backend torch")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("RECSYS_SERVE_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default: $RECSYS_SERVE_TOKEN, else none)")
    parser.add_argument("--max-instances", type=int, default=defaults.max_instances)
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-sequence-items", type=int, default=defaults.max_sequence_items)
    parser.add_argument("--threads", type=int, default=1,
                        help="cores one request may use: a large request is scored in that many row chunks side by side")
    a = parser.parse_args(args)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(a.source, backend=a.backend, host=a.host, port=a.port, token=a.token or None, threads=a.threads,
          limits=Limits(a.max_instances, a.max_body_bytes, a.max_sequence_items))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and os.environ.get("LOCAL_RANK") and "=" in command:
        # A DDP worker: Lightning relaunches `python -m recsys.commands.cli` with the overrides alone
        # (the `train` word was consumed before Hydra saw sys.argv).
        command, rest = "train", argv
    if command == "train":
        # `paths.output_dir=DIR` names the run's folder: make it Hydra's run folder too, so the run's
        # log and config land beside its metrics (unless Hydra's folder is set explicitly).
        out = [a.split("=", 1)[1] for a in rest if a.startswith("paths.output_dir=")]
        if out and not any(a.startswith(("hydra.run.dir=", "-m", "--multirun")) for a in rest):
            rest = [*rest, f"hydra.run.dir={out[-1]}"]
        sys.argv = [sys.argv[0], *rest]
        _train_main()
    elif command == "bench":
        from recsys.bench import main as bench_main

        bench_main(rest)
    elif command == "report":
        from recsys.commands.report import main as report_main

        report_main(rest)
    elif command == "export":
        _export_main(rest)
    elif command == "serve":
        _serve_main(rest)
    else:
        print(f"recsys: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
