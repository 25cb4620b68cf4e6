"""`recsys bench streaming`: the data path on Criteo-shaped data from 10M to 100M rows, at flat memory.

    recsys bench streaming --data-dir /work/bench-data/streaming --sizes 10M,30M,100M --train-rows 10M

1. Raw data, once (reused by later runs): Criteo-shaped Parquet parts for the largest size
   (recsys/data/criteo_synthetic.py). A smaller size is the first parts of it, which is exactly what the
   generator writes for that size.
2. For each size, each step in a child process of its own, whose peak RSS is its own high-water mark
   (VmHWM): the feature fit (streaming); the transform of train, valid and test to Parquet;
   the fixed-width arrays beside it; one full pass of the training loader over the arrays (`DiskSource`,
   shuffled by blocks). A bare child (interpreter and libraries) gives the baseline. Sizes other than
   the training size are deleted once measured, unless --keep.
3. At --train-rows (one of the sizes): training throughput and test AUC from memory and from disk in one
   child, in turns (memory with its default global order, memory in the block order that disk reads,
   disk; then again), each turn a fresh model trained for --train-steps steps; and the loader alone, in
   the same turns. Memory in the block order sees exactly the batches disk does, so their AUCs agree to
   float rounding; the global order shows what block shuffling costs.

Writes <out>/streaming.json and <out>/streaming.md; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GIB = 1 << 30
SPLITS = ("train", "valid", "test")
# The limits: RSS beyond the vocabularies for fit and transform; RSS of a loader pass.
RSS_LIMIT_GIB = 4.0
THROUGHPUT_RATIO_MIN = 0.9
AUC_TOLERANCE = 0.001


def parse_rows(text: str) -> int:
    """'10M' -> 10_000_000, '250k' -> 250_000, '1000' -> 1000."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _label(rows: int) -> str:
    return f"{rows / 1e6:g}M" if rows >= 1_000_000 else f"{rows:,}"


# ---------------------------------------------------------------------------------------------- children
def _child(step: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run one step in a fresh interpreter; its JSON result plus its wall time and peak RSS. The peak is
    the child's own VmHWM (the high-water mark of its address space, which starts afresh at exec):
    `ru_maxrss`, from `getrusage` in the child or `wait4` here, starts from the parent's RSS at the fork,
    so a child of a large driver would report the driver's size."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "recsys.bench.streaming", step, json.dumps(options)],
                          stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"bench streaming: step {step} {options} failed with exit code {proc.returncode} "
                           "(its log is above)")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"bench streaming: step {step} printed no result; its output ends with {out[-2000:]!r}")
    result = json.loads(lines[-1])
    result.update(step=step, wall_s=wall, peak_rss_gib=result.pop("vm_hwm_gib"))
    return result


def _train_parts(raw: Path, rows: int, part_rows: int) -> list[str]:
    if rows % part_rows:
        raise SystemExit(f"bench streaming: {rows} rows is not a whole number of parts of {part_rows} rows")
    parts = sorted((raw / "train.parquet").glob("part-*.parquet"))[: rows // part_rows]
    if len(parts) * part_rows < rows:
        raise SystemExit(f"bench streaming: {raw} holds {len(parts)} train parts, fewer than {rows} rows need")
    return [str(p) for p in parts]


def _split_scan(o: dict[str, Any], split: str):  # noqa: ANN202 - a LazyFrame
    import polars as pl

    raw = Path(o["raw"])
    files = _train_parts(raw, o["rows"], o["part_rows"]) if split == "train" else str(raw / f"{split}.parquet")
    return pl.scan_parquet(files)


def step_baseline(o: dict[str, Any]) -> dict[str, Any]:
    """The interpreter with the libraries every step imports, and one tiny query on each engine."""
    import polars as pl
    import torch

    import recsys.data.sources  # noqa: F401
    from recsys.features import FeaturePipeline  # noqa: F401

    pl.LazyFrame({"a": [1, 2]}).select(pl.len()).collect(engine="streaming")
    torch.ones(2).sum()
    return {}


def step_fit(o: dict[str, Any]) -> dict[str, Any]:
    from recsys.data.criteo_synthetic import criteo_fields
    from recsys.features import FeaturePipeline

    start = time.perf_counter()
    pipeline = FeaturePipeline(criteo_fields()).fit(_split_scan(o, "train"))
    seconds = time.perf_counter() - start
    pipeline.save(Path(o["prepared"]) / "features")
    return {"rows": o["rows"], "seconds": seconds,
            "vocab_ids": sum(v.height for v in pipeline.vocabs.values()),
            "vocab_gib": sum(v.estimated_size() for v in pipeline.vocabs.values()) / GIB}


def step_transform(o: dict[str, Any]) -> dict[str, Any]:
    from recsys.features import FeaturePipeline

    prepared = Path(o["prepared"])
    pipeline = FeaturePipeline.load(prepared / "features")
    seconds = {}
    for split in SPLITS:
        start = time.perf_counter()
        # What prepare_dataset does per split: check every value (one streaming pass), then transform.
        pipeline.check_values(_split_scan(o, split), f"{split} split")
        pipeline.transform(_split_scan(o, split), check_values=False).sink_parquet(prepared / f"{split}.parquet",
                                                                                   engine="streaming")
        seconds[split] = time.perf_counter() - start
    (prepared / "DONE").touch()
    return {"rows": o["rows"], "seconds": seconds["train"], "eval_seconds": seconds["valid"] + seconds["test"],
            "vocab_gib": sum(v.estimated_size() for v in pipeline.vocabs.values()) / GIB,
            "parquet_gib": (prepared / "train.parquet").stat().st_size / GIB}


def step_arrays(o: dict[str, Any]) -> dict[str, Any]:
    from recsys.data.arrays import SplitArrays, write_split_arrays
    from recsys.data.prepare import PreparedData

    prepared = PreparedData("criteo_synthetic", Path(o["prepared"]))
    schema = prepared.schema()
    seconds = {}
    for split in SPLITS:
        start = time.perf_counter()
        write_split_arrays(prepared.split_path(split), schema, prepared.directory / "arrays" / split, split)
        seconds[split] = time.perf_counter() - start
    train = SplitArrays(prepared.directory / "arrays" / "train", schema)
    return {"rows": train.n_rows, "seconds": seconds["train"], "row_bytes": train.row_bytes,
            "arrays_gib": train.n_rows * train.row_bytes / GIB}


def step_loader(o: dict[str, Any]) -> dict[str, Any]:
    from recsys.data.arrays import SplitArrays
    from recsys.data.sources import DiskSource

    arrays = SplitArrays(Path(o["prepared"]) / "arrays" / "train")
    source = DiskSource(arrays, o["batch_size"], shuffle=True, seed=0, block_rows=o["block_rows"])
    read_before, cpu_before = storage_read_bytes(), time.process_time()
    start = time.perf_counter()
    rows = batches = 0
    for batch in source:
        rows += len(batch)
        batches += 1
    seconds = time.perf_counter() - start
    if rows != arrays.n_rows or batches != len(source):
        raise RuntimeError(f"a loader pass gave {rows} rows in {batches} batches; the split has {arrays.n_rows} rows")
    # CPU time and the bytes that came from the device, not the page cache: a pass over arrays larger than
    # the cache waits on the disk, which the wall time shows and the CPU time per row does not.
    return {"rows": rows, "seconds": seconds, "batches": batches, "cpu_seconds": time.process_time() - cpu_before,
            "read_gib": (storage_read_bytes() - read_before) / GIB, "arrays_gib": arrays.n_rows * arrays.row_bytes / GIB}


def step_train(o: dict[str, Any]) -> dict[str, Any]:
    """Training throughput and test AUC per storage, in turns, in this one process."""
    import pytorch_lightning as L
    import torch

    from recsys.config import build_model, build_task, compose_train_config
    from recsys.data.modules import CTRDataModule
    from recsys.data.prepare import PreparedData

    prepared = PreparedData("criteo_synthetic", Path(o["prepared"]))
    cfg = compose_train_config([f"model={o['model']}", "data=criteo_synthetic", f"seed={o['seed']}"])
    contenders = {
        "memory (global order)": dict(storage="memory", order="global"),
        "memory (block order)": dict(storage="memory", order="blocks"),
        "disk (block order)": dict(storage="disk", order="blocks"),
    }
    modules: dict[str, CTRDataModule] = {}
    for name, options in contenders.items():
        dm = CTRDataModule(prepared, batch_size=o["batch_size"], eval_batch_size=o["eval_batch_size"], seed=o["seed"],
                           block_rows=o["block_rows"], **options)
        if options["storage"] == "memory" and any(m.storage == "memory" for m in modules.values()):
            # The memory contenders differ only in order: they share one copy of the tensors.
            dm.splits = next(m for m in modules.values() if m.storage == "memory").splits
        dm.setup()
        modules[name] = dm
    steps_per_epoch = len(next(iter(modules.values())).train_dataloader())
    if o["steps"] > steps_per_epoch:
        raise SystemExit(f"--train-steps {o['steps']} is more than one epoch ({steps_per_epoch} steps)")

    class StepTimer(L.Callback):
        """Rows, wall seconds and this process's CPU seconds (every thread, the read-ahead one included)
        from the end of the warm-up steps to the last step. CPU time is what a busy shared machine
        disturbs least: other processes' load stretches wall time, not the work this one does."""

        def __init__(self, warmup: int):
            self.warmup, self.rows, self.start, self.stop = warmup, 0, (0.0, 0.0), (0.0, 0.0)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx == self.warmup:
                self.start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if batch_idx >= self.warmup:
                self.rows += len(batch)
                self.stop = (time.perf_counter(), time.process_time())

    runs = []
    loader_runs = []
    for turn in range(o["turns"]):
        for name, dm in modules.items():
            # The loader alone: the same number of batches, no model.
            source = dm.train_dataloader()
            start, cpu, rows = time.perf_counter(), time.process_time(), 0
            for i, batch in enumerate(source):
                rows += len(batch)
                if i + 1 == o["steps"]:
                    break
            loader_runs.append({"contender": name, "turn": turn, "rows_per_second": rows / (time.perf_counter() - start),
                                "rows_per_cpu_second": rows / (time.process_time() - cpu)})

            L.seed_everything(o["seed"], workers=True)
            task = build_task(cfg, build_model(cfg.model, dm.schema))
            timer = StepTimer(o["warmup_steps"])
            trainer = L.Trainer(max_steps=o["steps"], accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                                num_sanity_val_steps=0, callbacks=[timer])
            trainer.fit(task, datamodule=dm)
            auc = trainer.test(task, datamodule=dm, verbose=False)[0]["test/auc"]
            runs.append({"contender": name, "turn": turn, "steps": int(trainer.global_step),
                         "rows_per_second": timer.rows / (timer.stop[0] - timer.start[0]),
                         "rows_per_cpu_second": timer.rows / (timer.stop[1] - timer.start[1]), "test_auc": float(auc)})
            print(json.dumps({"progress": runs[-1], "loader": loader_runs[-1]}), file=sys.stderr, flush=True)
            del task, trainer
    return {"rows": o["rows"], "runs": runs, "loader_runs": loader_runs, "threads": torch.get_num_threads()}


STEPS = {"baseline": step_baseline, "fit": step_fit, "transform": step_transform, "arrays": step_arrays,
         "loader": step_loader, "train": step_train}


# ---------------------------------------------------------------------------------------------- report
def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def summarise(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The report's tables (Markdown) and its checks against the issue's goals."""
    base = result["baseline"]["peak_rss_gib"]
    lines = [f"Baseline (interpreter and libraries): peak RSS {base:.2f} GiB.", "",
             "| rows | fit s | fit rows/s | fit peak RSS GiB | vocabulary ids | vocabularies GiB | transform s | "
             "transform rows/s | transform peak RSS GiB | arrays s | arrays peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    checks: dict[str, Any] = {}
    sizes = result["sizes"]
    for s in sizes:
        f, t, a = s["fit"], s["transform"], s["arrays"]
        lines.append(f"| {_label(s['rows'])} | {f['seconds']:.0f} | {s['rows'] / f['seconds']:,.0f} | {f['peak_rss_gib']:.2f} | "
                     f"{f['vocab_ids']:,} | {f['vocab_gib']:.3f} | {t['seconds']:.0f} | {s['rows'] / t['seconds']:,.0f} | "
                     f"{t['peak_rss_gib']:.2f} | {a['seconds']:.0f} | {a['peak_rss_gib']:.2f} |")
    lines += ["", "| rows | loader pass s | rows/s | ns per row | CPU ns per row | arrays GiB | GiB read from storage | "
              "peak RSS GiB |", "|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        p = s["loader"]
        lines.append(f"| {_label(s['rows'])} | {p['seconds']:.1f} | {s['rows'] / p['seconds']:,.0f} | "
                     f"{p['seconds'] / s['rows'] * 1e9:.0f} | {p['cpu_seconds'] / s['rows'] * 1e9:.0f} | "
                     f"{p['arrays_gib']:.1f} | {p['read_gib']:.1f} | {p['peak_rss_gib']:.2f} |")
    big = sizes[-1]
    checks["fit_rss_beyond_vocabularies_gib"] = max(s["fit"]["peak_rss_gib"] - s["fit"]["vocab_gib"] for s in sizes)
    checks["transform_rss_beyond_vocabularies_gib"] = max(s["transform"]["peak_rss_gib"] - s["transform"]["vocab_gib"]
                                                          for s in sizes)
    checks["loader_peak_rss_gib"] = {_label(s["rows"]): s["loader"]["peak_rss_gib"] for s in sizes}
    checks["rss_goals_met"] = (checks["fit_rss_beyond_vocabularies_gib"] <= RSS_LIMIT_GIB
                               and checks["transform_rss_beyond_vocabularies_gib"] <= RSS_LIMIT_GIB
                               and max(checks["loader_peak_rss_gib"].values()) <= RSS_LIMIT_GIB)
    if len(sizes) > 1:
        small = sizes[0]

        def per_row(s: dict[str, Any], step: str) -> float:
            return s[step]["seconds"] / s["rows"]

        checks["cost_per_row_largest_over_smallest"] = {
            step: per_row(big, step) / per_row(small, step) for step in ("fit", "transform", "arrays", "loader")}
        checks["cost_per_row_largest_over_smallest"]["loader_cpu"] = (
            big["loader"]["cpu_seconds"] / big["rows"]) / (small["loader"]["cpu_seconds"] / small["rows"])
        checks["loader_rss_largest_over_smallest"] = big["loader"]["peak_rss_gib"] / small["loader"]["peak_rss_gib"]
    train = result.get("train")
    if train:
        names = list(dict.fromkeys(r["contender"] for r in train["runs"]))
        lines += ["", f"Training at {_label(train['rows'])} rows, {train['runs'][0]['steps']} steps per turn, "
                  f"{len(train['runs']) // len(names)} turns (median, with min–max):", "",
                  "| contender | train rows/s | train rows per CPU-second | loader alone rows/s | "
                  "test AUC after the same steps |", "|---|---|---|---|---|"]
        by = {n: [r for r in train["runs"] if r["contender"] == n] for n in names}
        loaders = {n: [r["rows_per_second"] for r in train["loader_runs"] if r["contender"] == n] for n in names}
        for n in names:
            aucs = sorted({round(r["test_auc"], 6) for r in by[n]})
            lines.append(f"| {n} | {_spread([r['rows_per_second'] for r in by[n]])} | "
                         f"{_spread([r.get('rows_per_cpu_second', float('nan')) for r in by[n]])} | {_spread(loaders[n])} | "
                         f"{', '.join(f'{a:.6f}' for a in aucs)} |")
        disk = by["disk (block order)"]
        for n in names[:2]:
            for measure in ("rows_per_second", "rows_per_cpu_second"):
                if not all(measure in r for r in disk + by[n]):
                    continue
                # Per turn, so that a burst of load counts against both sides of each ratio.
                ratios = [d[measure] / m[measure] for d, m in zip(disk, by[n])]
                checks[f"disk_over_{n}_{measure}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                       "max": max(ratios)}
            checks[f"auc_diff_disk_vs_{n}"] = max(abs(d["test_auc"] - m["test_auc"]) for d, m in zip(disk, by[n]))
        ratios = [checks.get(f"disk_over_{n}_{m}", {}).get("median", 0.0) for n in names[:2]
                  for m in ("rows_per_second", "rows_per_cpu_second")]
        checks["throughput_goal_met"] = min(ratios) >= THROUGHPUT_RATIO_MIN
        checks["auc_goal_met"] = checks["auc_diff_disk_vs_memory (block order)"] <= AUC_TOLERANCE
    return "\n".join(lines), checks


# ---------------------------------------------------------------------------------------------- driver
def run(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.data.criteo_synthetic import write_criteo_synthetic

    sizes = sorted({parse_rows(s) for s in args.sizes.split(",")})
    train_rows = parse_rows(args.train_rows) if args.train_rows else None
    if train_rows is not None and train_rows not in sizes:
        raise SystemExit(f"--train-rows {args.train_rows} must be one of --sizes {args.sizes}")
    data_dir = Path(args.data_dir)
    out = Path(args.out or f"outputs/bench/streaming-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    raw = data_dir / "raw"
    start = time.perf_counter()
    write_criteo_synthetic(raw, n_train=sizes[-1], n_valid=parse_rows(args.eval_rows), n_test=parse_rows(args.eval_rows),
                           seed=args.seed, part_rows=parse_rows(args.part_rows))
    result: dict[str, Any] = {
        "command": "recsys bench streaming " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "streaming"] else []),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_at_start": os.getloadavg(),
                    "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "generate_seconds": time.perf_counter() - start,
        "torch_threads": args.threads or "default",
        "baseline": _child("baseline", {}), "sizes": [],
    }
    common = {"raw": str(raw), "part_rows": parse_rows(args.part_rows), "batch_size": args.batch_size,
              "block_rows": args.block_rows, "threads": args.threads}
    for rows in sizes:
        prepared = data_dir / f"prepared-{rows}"
        if prepared.exists():
            shutil.rmtree(prepared)  # a fresh fit each run: its time is what is measured
        prepared.mkdir(parents=True)
        o = {**common, "rows": rows, "prepared": str(prepared)}
        entry = {"rows": rows}
        for step in ("fit", "transform", "arrays", "loader"):
            entry[step] = _child(step, o)
            print(f"{_label(rows)} {step}: {entry[step]['seconds']:.1f} s, peak RSS {entry[step]['peak_rss_gib']:.2f} GiB",
                  file=sys.stderr, flush=True)
        entry["disk_gib"] = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file()) / GIB
        result["sizes"].append(entry)
        if rows == train_rows:
            result["train"] = _child("train", {**o, "model": args.model, "steps": args.train_steps, "turns": args.turns,
                                                "warmup_steps": args.warmup_steps, "seed": args.seed,
                                                "eval_batch_size": args.eval_batch_size})
        if not args.keep:
            shutil.rmtree(prepared)
        (out / "streaming.json").write_text(json.dumps(result, indent=2))  # what is done so far
    result["load_average_at_end"] = os.getloadavg()
    table, checks = summarise(result)
    result["checks"] = checks
    (out / "streaming.json").write_text(json.dumps(result, indent=2))
    (out / "streaming.md").write_text(table + "\n\nChecks: " + json.dumps(checks, indent=1) + "\n")
    print(table)
    print("checks:", json.dumps(checks, indent=1))
    return result


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("streaming", help="fit, transform and training loader on Criteo-shaped data from 10M to 100M rows")
    p.add_argument("--data-dir", default=".cache/recsys-zoo/bench-streaming",
                   help="where the raw data (kept, reused) and each size's prepared data (deleted unless --keep) go")
    p.add_argument("--sizes", default="10M,30M,100M", help="training rows per measured size, comma-separated")
    p.add_argument("--train-rows", default="10M", help="the size at which training from memory and disk is compared ('' for none)")
    p.add_argument("--eval-rows", default="1M", help="rows of the validation and test splits")
    p.add_argument("--part-rows", default="1M", help="rows per raw Parquet part (every size must be a multiple)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--eval-batch-size", type=int, default=16384)
    p.add_argument("--block-rows", type=int, default=1 << 18, help="rows per block of the disk order")
    p.add_argument("--model", default="fm", help="the model trained in the comparison: a light one (FM) leaves the loader the most of each step to show")
    p.add_argument("--train-steps", type=int, default=300, help="training steps per contender and turn")
    p.add_argument("--warmup-steps", type=int, default=20, help="steps left out of each turn's timing")
    p.add_argument("--turns", type=int, default=5, help="rounds of the three contenders (memory global, memory blocks, disk)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in the loader and training steps (0: torch's default). On a small shared "
                        "machine use 1: a parallel op whose second thread waits for a busy core stalls for "
                        "milliseconds, which drowns what is measured")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--keep", action="store_true", help="keep every size's prepared data")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=run)


def _worker(argv: list[str]) -> None:
    step, options = argv[0], json.loads(argv[1])
    if options.get("threads"):
        import torch

        torch.set_num_threads(options["threads"])
    result = STEPS[step](options)
    result["vm_hwm_gib"] = peak_rss_gib()
    print(json.dumps(result), flush=True)


def storage_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (`read_bytes` of /proc/self/io; page-cache hits
    are not counted)."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io: bench streaming measures storage reads on Linux")


def peak_rss_gib() -> float:
    """This process's peak resident memory since it started its program (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no VmHWM in /proc/self/status: bench streaming measures memory on Linux")


if __name__ == "__main__":
    _worker(sys.argv[1:])
