"""`recsys bench accuracy`: a suite of experiments (conf/suites/*.yaml), each trained over several seeds,
summarised as mean ± sd per row, with the suite's claims checked on the seed means.

    recsys bench accuracy --suite sequence --seeds 2021 2022 2023 --jobs 4 --out DIR [hydra overrides]

Every run is a separate `recsys train` process writing to DIR/runs/<name>/seed-<s>/ (its log beside it
as seed-<s>.log), so runs can go in parallel (`--jobs`; on one GPU too) and one crash loses one run.
A run whose metrics.json exists is not run again: rerunning the same command resumes an interrupted
suite. Trailing overrides go to every run (`trainer=gpu`, `trainer.max_epochs=2`, ...). Results go to
DIR/accuracy.json, DIR/accuracy.md and DIR/accuracy.svg (each table's test metric against its size).

A search-then-retrain entry (docs/search.md) names its search too:
    - {name: frappe_x1/optinter, experiment: optinter_frappe_x1, search: {experiment: optinter_search_frappe_x1}}
Per seed, the search runs first into DIR/runs/<name>/seed-<s>/search/ (same seed, its own log), then the
retrain with `model.architecture=<that folder>/architecture.json`. A finished search is not run again, so
an interrupted suite resumes at the retrain. The row is the retrain's; it also carries the search's time
and the architecture's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from recsys.baselines import baselines_of_runs, beats, best_baseline  # readers only: no torch, no data

# On the seed means of a claim's metric (default: the test value of the metric the runs were selected on;
# or a number metrics.json records at its top level, such as num_parameters), with b scaled by `factor`
# (default 1, so `at_most` with factor 0.5 says "a has at most half of b"):
#   better:   a > factor * b
#   at_least: a >= factor * b - tolerance (tolerance 0 by default): one-sided, and its text says "≥ b − tol"
#   at_most:  a <= factor * b + tolerance: one-sided
#   within:   |a - factor * b| <= tolerance: two-sided
CLAIM_KINDS = ("better", "at_least", "at_most", "within")
# Numbers a row averages from the top level of each seed's metrics.json (parameters differ between seeds
# when each seed searched its own architecture).
RUN_NUMBERS = ("epochs", "train_seconds", "fit_seconds", "num_parameters", "num_embedding_parameters")


@dataclass(frozen=True)
class SuiteRun:
    name: str
    experiment: str | None
    overrides: tuple[str, ...] = ()
    # A search-then-retrain entry: the search's experiment and overrides, run first per seed.
    search: SuiteRun | None = None

    @property
    def hydra_overrides(self) -> list[str]:
        return ([f"experiment={self.experiment}"] if self.experiment else []) + list(self.overrides)

    @property
    def table(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def row(self) -> str:
        return self.name.split("/", 1)[-1]


def _suite_path(suite: str) -> Path:
    """A suite by name (conf/suites/<name>.yaml) or by path to a YAML file."""
    path = Path(suite)
    if not path.suffix:
        path = Path(str(files("recsys.conf") / "suites" / f"{suite}.yaml"))
    if not path.is_file():
        known = sorted(p.stem for p in Path(str(files("recsys.conf") / "suites")).glob("*.yaml"))
        raise SystemExit(f"unknown suite {suite!r}: no file {path}; the suites are {known}")
    return path


def _suite_spec(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def load_suite(suite: str) -> tuple[list[SuiteRun], list[dict[str, Any]]]:
    """A suite by name (conf/suites/<name>.yaml) or by path to a YAML file. `claims_from: NAME` takes the
    claims of another suite (its runs must be in this one)."""
    path = _suite_path(suite)
    spec = _suite_spec(path)
    runs = []
    for r in spec.get("runs") or []:
        search = r.get("search")
        if search is not None and (not isinstance(search, dict) or not (search.get("experiment") or search.get("overrides"))):
            raise SystemExit(f"suite {path}: run {r.get('name')!r} has search {search!r}; expected {{experiment: ..., overrides: [...]}}")
        runs.append(SuiteRun(r["name"], r.get("experiment"), tuple(r.get("overrides") or ()),
                             SuiteRun(f"{r['name']}/search", search.get("experiment"), tuple(search.get("overrides") or ()))
                             if search else None))
    names = [r.name for r in runs]
    if not runs or len(set(names)) != len(names):
        raise SystemExit(f"suite {path}: needs runs with unique names (got {names})")
    claims = list(spec.get("claims") or [])
    if spec.get("claims_from"):
        # One list of claims for suites that run the same rows at different budgets (search, search_short).
        if claims:
            raise SystemExit(f"suite {path}: has both claims and claims_from; keep one")
        claims = _suite_spec(_suite_path(spec["claims_from"])).get("claims") or []
    for claim in claims:
        if claim.get("kind") not in CLAIM_KINDS:
            raise SystemExit(f"suite {path}: claim {claim} has kind {claim.get('kind')!r}; expected one of {CLAIM_KINDS}")
        if claim["kind"] == "within" and "tolerance" not in claim:
            raise SystemExit(f"suite {path}: claim {claim} is 'within' and needs a tolerance")
        missing = [claim[k] for k in ("a", "b") if claim.get(k) not in names]
        if missing:
            raise SystemExit(f"suite {path}: claim {claim} names runs that are not in the suite: {missing}")
    return runs, claims


def run_dir(out: Path, run: SuiteRun, seed: int) -> Path:
    return out / "runs" / run.name / f"seed-{seed}"


def search_dir(out: Path, run: SuiteRun, seed: int) -> Path:
    """Where a search-then-retrain entry's search writes, inside the retrain's run folder."""
    return run_dir(out, run, seed) / "search"


def prepare_data(runs: list[SuiteRun], extra: list[str]) -> None:
    """Fit each dataset before runs go in parallel and would all fit it at once (a dataset already in
    the cache is only checked)."""
    from recsys.config import compose_train_config, prepare_configured

    for run in runs:
        for part in (run, run.search):
            if part is not None:
                prepare_configured(compose_train_config([*part.hydra_overrides, *extra]))


def _train_process(overrides: list[str], target: Path, log_path: Path, seed: int, extra: list[str], threads: int) -> int:
    command = [sys.executable, "-m", "recsys.commands.cli", "train", *overrides,
               f"seed={seed}", f"paths.output_dir={target}", "trainer.enable_progress_bar=false",
               f"num_threads={threads}", *extra]
    with log_path.open("w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


def train_one(out: Path, run: SuiteRun, seed: int, extra: list[str], threads: int) -> dict[str, Any]:
    """One seed of one entry: its search first when it has one (unless that search already finished),
    then the run itself, retraining the search's architecture."""
    from recsys.search import ARCHITECTURE_FILE

    target = run_dir(out, run, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    overrides = run.hydra_overrides
    if run.search is not None:
        searched = search_dir(out, run, seed)
        if not (searched / "metrics.json").exists():
            log_path = target.parent / f"seed-{seed}-search.log"
            code = _train_process(run.search.hydra_overrides, searched, log_path, seed, extra, threads)
            if code != 0:
                return {"name": run.name, "seed": seed, "returncode": code, "seconds": time.perf_counter() - start,
                        "log": str(log_path), "stage": "search"}
        overrides = [*overrides, f"model.architecture={searched / ARCHITECTURE_FILE}"]
    log_path = target.parent / f"seed-{seed}.log"
    code = _train_process(overrides, target, log_path, seed, extra, threads)
    return {"name": run.name, "seed": seed, "returncode": code, "seconds": time.perf_counter() - start, "log": str(log_path)}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _numbers(split: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in split.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def claim_holds(kind: str, diff: float, tolerance: float) -> bool:
    """Whether a claim of `kind` holds for a - factor * b = `diff` (see CLAIM_KINDS). A difference on the
    tolerance itself holds: 1e-12 absorbs the float rounding of a - b."""
    if kind == "better":
        return diff > 0
    if kind == "at_least":
        return diff >= -tolerance - 1e-12
    if kind == "at_most":
        return diff <= tolerance + 1e-12
    return abs(diff) <= tolerance + 1e-12


def claim_text(claim: dict[str, Any]) -> str:
    tolerance = float(claim.get("tolerance", 0.0))
    metric = claim.get("metric", "")
    factor = float(claim.get("factor", 1.0))
    b = claim["b"] if factor == 1.0 else f"{factor:g} × {claim['b']}"
    if claim["kind"] == "better":
        text = f"{claim['a']} > {b}"
    elif claim["kind"] == "at_least":
        text = f"{claim['a']} ≥ {b}" + (f" − {tolerance:g}" if tolerance else "")
    elif claim["kind"] == "at_most":
        text = f"{claim['a']} ≤ {b}" + (f" + {tolerance:g}" if tolerance else "")
    else:
        text = f"|{claim['a']} − {b}| ≤ {tolerance:g}"
    return f"{text} ({metric})" if metric else text


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    """`split/key` of a metrics.json (test/auc), or a number at its top level (num_parameters)."""
    split, _, key = name.partition("/")
    value = (metrics.get(split) or {}).get(key) if key else metrics.get(split)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarise(out: Path, runs: list[SuiteRun], seeds: list[int], claims: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: every validation and test metric as mean ± sd over the seeds that finished. Per claim: the
    difference of the seed means of its metric, whether it holds, and on how many seeds a beats b."""
    rows, per_seed = [], {}
    for run in runs:
        metrics = {}
        for seed in seeds:
            path = run_dir(out, run, seed) / "metrics.json"
            if path.exists():
                metrics[seed] = json.loads(path.read_text())
        per_seed[run.name] = metrics
        row: dict[str, Any] = {"name": run.name, "table": run.table, "row": run.row, "experiment": run.experiment,
                               "overrides": list(run.overrides), "seeds": sorted(metrics)}
        if metrics:
            ms = list(metrics.values())
            row["selection_metric"] = str(ms[0].get("monitor", "val/auc"))
            row["selection_mode"] = str(ms[0].get("mode", "max"))
            values: dict[str, list[float]] = {}
            for m in ms:
                for split in ("val", "test"):
                    for k, v in _numbers(m.get(split) or {}).items():
                        values.setdefault(f"{split}/{k}", []).append(v)
                for k in RUN_NUMBERS:
                    if _metric(m, k) is not None:
                        values.setdefault(k, []).append(_metric(m, k))
            if run.search is not None:
                searches = [search_dir(out, run, s) / "metrics.json" for s in metrics]
                for found in (json.loads(p.read_text()) for p in searches if p.exists()):
                    values.setdefault("search_fit_seconds", []).append(float(found["fit_seconds"]))
                    values.setdefault("search_epochs", []).append(float(found["epochs"]))
            shares = [(m.get("architecture") or {}).get("summary") or {} for m in ms]
            for key in sorted({k for sh in shares for k, v in (sh.get("share") or {}).items()}):
                values.setdefault(f"share/{key}", []).extend(float(sh["share"][key]) for sh in shares if key in (sh.get("share") or {}))
            for key in ("kept_entries", "reduction", "mean_dims"):
                values.setdefault(key, []).extend(float(sh[key]) for sh in shares if isinstance(sh.get(key), (int, float)))
            for key, vs in values.items():
                if len(vs) == len(ms):  # a metric every seed has
                    row[key], row[key + "_sd"] = _mean_sd(vs)
            row["dataset"] = ms[0]["dataset"]
            row["seeds_at_epoch_cap"] = sorted(seed for seed, m in metrics.items() if _stopped_at_epoch_cap(m))
        rows.append(row)
    baselines = {table: baselines_of_runs(run_dir(out, r, s) for r in runs if r.table == table for s in seeds)
                 for table in dict.fromkeys(r.table for r in runs)}
    for row in rows:
        row["below_baseline"] = _below_baseline(row, baselines[row["table"]])
    by_name = {r["name"]: r for r in rows}
    checked = []
    for claim in claims:
        a, b = by_name[claim["a"]], by_name[claim["b"]]
        result = dict(claim)
        metric = claim.get("metric") or "test/" + str(a.get("selection_metric", "val/auc")).split("/", 1)[1]
        result["metric"] = metric
        factor = float(claim.get("factor", 1.0))
        if metric not in a or metric not in b:
            result.update(status="not run")
        else:
            diff = a[metric] - factor * b[metric]
            tolerance = float(claim.get("tolerance", 0.0))
            common = sorted(set(per_seed[a["name"]]) & set(per_seed[b["name"]]))
            values_a = {s: _metric(per_seed[a["name"]][s], metric) for s in common}
            values_b = {s: _metric(per_seed[b["name"]][s], metric) for s in common}
            common = [s for s in common if values_a[s] is not None and values_b[s] is not None]
            paired = [values_a[s] - factor * values_b[s] for s in common]
            if b[metric]:
                result["ratio"] = a[metric] / b[metric]  # a over b itself, unscaled: "0.49x" reads better than a count
            result.update(status="holds" if claim_holds(claim["kind"], diff, tolerance) else "fails", difference=diff,
                          # a "wins" an at_most claim by being under b (fewer parameters), any other by being over it
                          seeds_where_a_wins=sum((d < 0) if claim["kind"] == "at_most" else (d > 0) for d in paired),
                          seeds_where_it_holds=sum(
                              claim_holds(claim["kind"], d, tolerance) for d in paired), seeds_compared=len(common))
        capped = [r["name"] for r in (a, b) if r.get("seeds_at_epoch_cap")]
        if capped and metric.split("/", 1)[0] in ("val", "test"):  # a parameter count does not converge
            result["rows_at_epoch_cap"] = capped
        checked.append(result)
    return {"seeds": seeds, "rows": rows, "claims": checked, "baselines": baselines}


def _stopped_at_epoch_cap(metrics: dict[str, Any]) -> bool:
    """Whether a run ran every epoch its trainer allowed and selected the last one: it was still improving,
    so the cap (trainer.max_epochs), not early stopping, ended it, and its figures are not converged. A
    claim that compares such a run measures how fast the two sides learn, not how well."""
    cap = ((metrics.get("config") or {}).get("trainer") or {}).get("max_epochs")
    epochs, best = metrics.get("epochs"), metrics.get("best_epoch")
    return cap is not None and epochs == cap and best == epochs - 1


def _below_baseline(row: dict[str, Any], baselines: list[dict[str, Any]]) -> str | None:
    """The best baseline of the row's dataset when the row's seed mean of its selection metric (validation)
    does not beat it, else None."""
    if "selection_metric" not in row or row["selection_metric"] not in row:
        return None
    split_key = row["selection_metric"].split("/", 1)[1]
    mode = row.get("selection_mode", "max")
    best = best_baseline([b for b in baselines if b["dataset"] == row.get("dataset")], split_key, mode)
    if best is None or beats(row[row["selection_metric"]], float(best["val"][split_key]), mode):
        return None
    return str(best.get("model"))


def _flags(row: dict[str, Any]) -> list[str]:
    flags = [f"BELOW BASELINE ({row['below_baseline']})"] if row.get("below_baseline") else []
    if row.get("seeds_at_epoch_cap"):
        flags.append(f"AT EPOCH CAP ({len(row['seeds_at_epoch_cap'])}/{len(row['seeds'])} seeds)")
    return flags


def _pm(row: dict[str, Any], key: str, digits: int = 4) -> str:
    if key not in row:
        return "—"
    return f"{row[key]:.{digits}f} ± {row[key + '_sd']:.{digits}f}" if len(row["seeds"]) > 1 else f"{row[key]:.{digits}f}"


# Metric columns of a table, in this order where present: the selection metric, then these test metrics.
TABLE_METRICS = ("test/auc", "test/gauc", "test/logloss", "test/ndcg@10", "test/hr@10", "test/ndcg@20", "test/hr@20",
                 "test/mrr")


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"Seeds: {', '.join(map(str, summary['seeds']))}. Mean ± sd over seeds; test metrics of the epoch "
             "with the best value of the validation metric each run is selected on. Rows named 'baseline: ...' learn only "
             "counts from train (recsys.baselines); BELOW BASELINE marks a row whose validation mean does not beat the best of them; "
             "AT EPOCH CAP a row with seeds that ran every epoch the trainer allowed and selected the last (still improving: "
             "not converged)."]
    for table in dict.fromkeys(r["table"] for r in summary["rows"]):
        members = [r for r in summary["rows"] if r["table"] == table]
        selection = list(dict.fromkeys(r["selection_metric"] for r in members if "selection_metric" in r))
        columns = selection + [c for c in TABLE_METRICS if any(c in r for r in members) and c not in selection]
        names = [c.replace("/", " ") for c in columns]
        flagged = any(_flags(r) for r in members)
        searched = any("search_fit_seconds" in r for r in members)
        extra = " search s |" if searched else ""
        lines += ["", f"### {table}", "", "| run | seeds | " + " | ".join(names) + f" | epochs | train s |{extra} params |"
                  + (" flags |" if flagged else ""),
                  "|---|---|" + "---|" * len(columns) + "---|---|---|" + ("---|" if searched else "") + ("---|" if flagged else "")]
        for r in members:
            params = f"{round(r['num_parameters']):,}" if "num_parameters" in r else "—"
            cells = " | ".join(_pm(r, c) for c in columns)
            flag = f" {'; '.join(_flags(r))} |" if flagged else ""
            search = f" {_pm(r, 'search_fit_seconds', 0)} |" if searched else ""
            lines.append(f"| {r['row']} | {len(r['seeds'])} | {cells} | {_pm(r, 'epochs', 1)} | {_pm(r, 'train_seconds', 0)} |"
                         f"{search} {params} |{flag}")
        # The baselines of the table's data (recsys.baselines), scored on the same splits; deterministic, so no seeds.
        for b in summary.get("baselines", {}).get(table, []):
            values = {f"{split}/{k}": v for split in ("val", "test") for k, v in _numbers(b.get(split) or {}).items()}
            cells = " | ".join(f"{values[c]:.4f}" if c in values else "—" for c in columns)
            lines.append(f"| {b['model']} | — | {cells} | — | — |{' — |' if searched else ''} — |" + (" baseline |" if flagged else ""))
    if summary["claims"]:
        lines += ["", "### Claims (seed means)", "", "| claim | a − b | seeds a wins | seeds it holds | status |",
                  "|---|---|---|---|---|"]
        for c in summary["claims"]:
            diff = f"{c['difference']:+.4f}" if "difference" in c else "—"
            if "difference" in c and float(c.get("factor", 1.0)) != 1.0 and "ratio" in c:  # a size claim
                diff = f"{c['difference']:+,.0f} ({c['ratio']:.2f}×)"
            wins = f"{c['seeds_where_a_wins']}/{c['seeds_compared']}" if "seeds_compared" in c else "—"
            holds = f"{c['seeds_where_it_holds']}/{c['seeds_compared']}" if "seeds_compared" in c else "—"
            status = c["status"] + (f" (not converged: {', '.join(c['rows_at_epoch_cap'])} stopped at the epoch cap)"
                                    if c.get("rows_at_epoch_cap") else "")
            lines.append(f"| {claim_text(c)} | {diff} | {wins} | {holds} | {status} |")
    architectures = [r for r in summary["rows"] if any(k.startswith("share/") or k == "kept_entries" for k in r)]
    if architectures:
        lines += ["", "### Architectures (seed means)", "", "| run | memorise | factorise | naive | kept entries | reduction |",
                  "|---|---|---|---|---|---|"]
        for r in architectures:
            cells = [_pm(r, f"share/{m}", 3) for m in ("memorise", "factorise", "naive")]
            cells += [f"{round(r['kept_entries']):,}" if "kept_entries" in r else "—", _pm(r, "reduction", 2)]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any]) -> str | None:
    """An SVG with one panel per table: each row's seed mean of its test selection metric (± sd) against its
    embedding parameters (all parameters where a row has no embedding count), log scale, so which model buys
    how much accuracy with how many parameters is read at a glance. None when no row has both numbers."""
    panels = []
    for table in dict.fromkeys(r["table"] for r in summary["rows"]):
        members = [r for r in summary["rows"] if r["table"] == table and "selection_metric" in r]
        if not members:
            continue
        metric = "test/" + members[0]["selection_metric"].split("/", 1)[1]
        size = "num_embedding_parameters" if all("num_embedding_parameters" in r for r in members) else "num_parameters"
        points = [r for r in members if metric in r and size in r]
        if points:
            panels.append((table, metric, size, points))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys.plotting import figure_svg

    markers = "osD^vP*X<>"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, and a smaller file
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
        for ax, (table, metric, size, points) in zip(axes[0], panels):
            for i, r in enumerate(points):
                ax.errorbar([r[size]], [r[metric]], yerr=[r.get(metric + "_sd", 0.0)], fmt=markers[i % len(markers)],
                            capsize=3, label=r["row"])
            ax.set(xscale="log", xlabel=size.removeprefix("num_").replace("_", " "), ylabel=metric.replace("/", " "),
                   title=f"{table} (mean ± sd over {len(summary['seeds'])} seeds)")
            ax.legend(fontsize=7)
        return figure_svg(fig)  # inside the context: the font setting applies when the figure is saved


def main(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from recsys.features.atomic import atomic_file, write_json_atomic

    runs, claims = load_suite(args.suite)
    if args.only:
        runs = [r for r in runs if any(r.name.startswith(prefix) for prefix in args.only)]
        names = {r.name for r in runs}
        claims = [c for c in claims if c["a"] in names and c["b"] in names]
    out = Path(args.out or f"outputs/bench/accuracy-{Path(args.suite).stem}")
    out.mkdir(parents=True, exist_ok=True)
    extra = list(args.overrides)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    pending = [(r, s) for r in runs for s in args.seeds if not (run_dir(out, r, s) / "metrics.json").exists()]
    if args.summary_only:
        pending = []
    print(f"{len(runs) * len(args.seeds) - len(pending)} runs already done, {len(pending)} to go, {args.jobs} at a time", flush=True)
    failures = []
    if pending:
        prepare_data(sorted({r for r, _ in pending}, key=runs.index), extra)
        with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(pending), desc="accuracy runs", unit="run") as bar:
            futures = [pool.submit(train_one, out, r, s, extra, threads) for r, s in pending]
            for future in as_completed(futures):
                done = future.result()
                bar.update(1)
                bar.set_postfix_str(f"{done['name']} seed {done['seed']}: {done['seconds']:.0f}s")
                if done["returncode"] != 0:
                    failures.append(done)
                    tqdm.write(f"FAILED {done['name']} seed {done['seed']} (exit {done['returncode']}): see {done['log']}")
    summary = summarise(out, runs, list(args.seeds), claims)
    summary["overrides"] = extra
    summary["failures"] = failures
    write_json_atomic(out / "accuracy.json", summary)
    table = markdown(summary)
    (out / "accuracy.md").write_text(table)
    figure = plot(summary)
    if figure is not None:
        with atomic_file(out / "accuracy.svg") as partial:
            partial.write_text(figure)
    print(table)
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed; their logs: {[f['log'] for f in failures]}")
    return summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("accuracy", help="a suite of experiments over several seeds, and its claims")
    p.add_argument("--suite", default="sequence", help="a name under conf/suites/ or a path to a suite YAML")
    p.add_argument("--seeds", type=int, nargs="+", default=[2021, 2022, 2023])
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the cores shared among --jobs)")
    p.add_argument("--only", nargs="+", default=None, help="run only entries whose name starts with one of these")
    p.add_argument("--out", default=None, help="folder for runs/, accuracy.json and accuracy.md")
    p.add_argument("--summary-only", action="store_true", help="train nothing: summarise the runs already in --out")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. trainer=gpu")
    p.set_defaults(fn=main)
