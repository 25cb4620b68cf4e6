"""The `recsys` command.

    recsys train [hydra overrides]        one run (or a sweep with -m), writes metrics.json
    recsys bench zoo [--data ...]         the zoo's models on one dataset, and a leaderboard
    recsys bench throughput [...]         our training speed against DeepCTR-Torch, side by side
    recsys report RUNS_DIR [...]          leaderboard (CSV, Markdown) and an HTML report of many runs
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__
COMMANDS = ("train", "bench", "report")


def _train_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://recsys.conf", config_name="train")
    def run(cfg: DictConfig) -> float:
        from hydra.types import RunMode

        from recsys.train import train_or_resume

        hydra_cfg = HydraConfig.get()
        sweep_dir = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None
        return train_or_resume(cfg, cfg.paths.output_dir, sweep_dir)

    run()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and os.environ.get("LOCAL_RANK") and "=" in command:
        # A DDP worker: Lightning relaunches `python -m recsys.cli` with the overrides alone
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
        from recsys.report import main as report_main

        report_main(rest)
    else:
        print(f"recsys: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
