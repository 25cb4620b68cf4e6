"""`recsys data inspect data=NAME [--config-dir DIR] [overrides]`: what a dataset looks like to the models,
from its data config and raw files, before any training (recsys.data.inspection): rows and label rate per
split, each field's kind, cardinality, null share, share of values unseen in train, sequence lengths, and
warnings for what will hurt. Fast: lazy scans of the raw files, the vocabularies fitted in memory (or read
from the feature cache when the dataset was prepared before). It writes no feature cache; a recipe's or the
synthetic generator's raw splits are written into the cache first, as `recsys train` would.

    recsys data inspect data=frappe_x1
    recsys data inspect --config-dir ~/my-configs data=mydata
    recsys data inspect data=mydata --config-dir ~/my-configs --json inspection.json
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="recsys data", description="Look at a dataset before training on it.",
                                   epilog="docs/data.md: every key of a data config, and a worked example from a CSV")
    sub = root.add_subparsers(dest="what", required=True)
    inspect = sub.add_parser(
        "inspect", help="rows, label rate, cardinalities, unseen values and warnings, from the data config alone",
        description=__doc__.split("\n\n")[0],
        epilog="The thresholds behind the warnings are in docs/data.md.")
    inspect.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                         help="Hydra overrides, as for recsys train: data=NAME picks the data config; data.KEY=VALUE changes one key")
    inspect.add_argument("--config-dir", default=None,
                         help="a folder of your own config groups (it holds data/NAME.yaml), as for recsys train --config-dir")
    inspect.add_argument("--json", default=None, metavar="PATH", help="also write the inspection as JSON to PATH")
    inspect.set_defaults(fn=inspect_command)
    return root


def inspect_command(args: argparse.Namespace) -> None:
    from recsys.config import compose_train_config, dataset_description
    from recsys.data.inspection import inspect_dataset
    from recsys.features.atomic import write_json_atomic

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"recsys data inspect: expected KEY=VALUE overrides (e.g. data=frappe_x1), got {bad}")
    cfg = compose_train_config(list(args.overrides), args.config_dir)
    result = inspect_dataset(dataset_description(cfg.data), cfg.paths.cache_dir)
    print(result.table(), end="")
    if args.json:
        write_json_atomic(Path(args.json), result.to_dict())
        print(f"written to {args.json}")


def main(argv: list[str]) -> None:
    root = parser()
    args, extra = root.parse_known_args(argv)
    # Options may come before, between or after the overrides: overrides after an option arrive as `extra`.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        root.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    args.fn(args)
