"""Baselines that learn nothing but counts, scored like any run, so a leaderboard shows what a model adds.

- CTR, constant: every row gets the training positive rate (AUC 0.5; its logloss is the label's entropy,
  the logloss a model must beat to have learned anything at all).
- CTR, target rate: the smoothed positive rate of the row's user and of its item in train, combined as
  log-odds around the training rate, logit(p) + sum_f (logit(r_f) - logit(p)), with
  r_f = (positives_f + m p) / (rows_f + m). The fields are the ones the schema marks `role: user` and
  `role: item`, else the two sparse fields of highest cardinality; the prior strength m is picked from
  PRIOR_STRENGTHS by validation logloss, as a run picks its epoch on validation. Rates are counted on the
  transformed ids, so a value too rare for the vocabulary (min_count) or unseen in train gets the rate of
  the out-of-vocabulary id, as a model sees it.
- Next-item, most popular: every user gets the items with the most training interactions, their own
  history masked, evaluated by the same full-ranking evaluator as the models.

Every metric comes from the tasks' own code (recsys.metrics), on the same prepared splits, so a baseline
row and a run's row are computed alike. `dataset_baselines` computes them once per prepared dataset (its
fingerprint) and keeps them as baselines.json beside it; `recsys train` copies that file into the run
folder, so `recsys report` and the benchmarks read baselines without touching the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BASELINES_FILE = "baselines.json"
# Bump when a baseline's definition changes, so cached baselines are recomputed.
BASELINES_VERSION = 1
PRIOR_STRENGTHS = (1.0, 3.0, 10.0, 30.0, 100.0)
BASELINE_PREFIX = "baseline: "
_EPS = 1e-6


def _logit(p: np.ndarray | float) -> np.ndarray | float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def rate_fields(schema: Any) -> list[Any]:
    """The fields of the target-rate baseline: those marked `role: user` / `role: item`, else the two sparse
    fields with the largest vocabularies."""
    marked = [f for f in (schema.with_role("user"), schema.with_role("item")) if f is not None]
    if marked:
        return marked
    return sorted(schema.sparse, key=lambda f: -(f.vocab_size or 0))[:2]


def _scored(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    import torch

    from recsys.metrics import ctr_metrics

    return ctr_metrics(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(groups))


def ctr_baselines(prepared: Any) -> list[dict[str, Any]]:
    """The constant and the target-rate baselines of a prepared CTR dataset, each with `val` and `test`
    metrics as a CTR run reports them (auc, logloss, gauc)."""
    import polars as pl

    from recsys.data.prepare import SPLITS

    schema = prepared.schema()
    label, group = schema.label, schema.group
    if label is None:
        return []
    fields = rate_fields(schema)
    columns = [label.name, *(f.name for f in fields), *([group.name] if group else [])]
    frames = {s: pl.read_parquet(prepared.split_path(s), columns=columns) for s in SPLITS}
    labels = {s: frames[s][label.name].to_numpy().astype(np.float64) for s in SPLITS}
    # As the CTR task does: without a group field every row is one group, so gAUC equals AUC.
    groups = {s: frames[s][group.name].to_numpy().astype(np.int64) if group else np.zeros(frames[s].height, np.int64)
              for s in SPLITS}
    rate = float(labels["train"].mean()) if len(labels["train"]) else 0.5
    prior = float(_logit(rate))

    def evaluate(score: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        return {"val": _scored(score["valid"], labels["valid"], groups["valid"]),
                "test": _scored(score["test"], labels["test"], groups["test"])}

    constant = {s: np.full(len(labels[s]), prior) for s in SPLITS}
    rows = [{"name": "constant", "model": BASELINE_PREFIX + "constant",
             "description": f"every row scored with the training positive rate ({rate:.4f})",
             "settings": {"rate": rate}, **evaluate(constant)}]
    if not fields:
        return rows
    ids = {s: {f.name: frames[s][f.name].to_numpy().astype(np.int64) for f in fields} for s in SPLITS}
    counts = {f.name: np.bincount(ids["train"][f.name], minlength=f.vocab_size) for f in fields}
    positives = {f.name: np.bincount(ids["train"][f.name], weights=labels["train"], minlength=f.vocab_size) for f in fields}

    def scores(strength: float) -> dict[str, np.ndarray]:
        shift = {f.name: _logit((positives[f.name] + strength * rate) / (counts[f.name] + strength)) - prior for f in fields}
        return {s: prior + sum(shift[f.name][ids[s][f.name]] for f in fields) for s in SPLITS}

    # The prior strength with the best validation logloss (ties: the stronger prior, the smoother score).
    chosen = min(PRIOR_STRENGTHS, key=lambda m: (round(_scored(scores(m)["valid"], labels["valid"], groups["valid"])["logloss"], 12), -m))
    names = [f.name for f in fields]
    rows.append({"name": "target rate", "model": BASELINE_PREFIX + "+".join(names) + " rate",
                 "description": f"smoothed training positive rate of {' and '.join(names)}, combined as log-odds "
                                f"(prior strength {chosen:g}, picked on validation logloss)",
                 "settings": {"fields": names, "prior_strength": chosen, "rate": rate}, **evaluate(scores(chosen))})
    return rows


def most_popular_next_item(datamodule: Any, split: str = "test", ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """HR@K, NDCG@K and MRR of ranking items by their training interaction count (the item vocabulary's
    counts, fitted on the training histories), on `split` of a NextItemDataModule."""
    import torch

    from recsys.features import FeaturePipeline
    from recsys.metrics import ranking_metrics, target_ranks

    history = datamodule.schema.sequence[0]
    counts = FeaturePipeline.load(datamodule.prepared.features_dir).row_counts()[history.vocab_key]
    popularity = torch.as_tensor(counts, dtype=torch.float32)
    rows = datamodule.load(split)
    ranks = [target_ranks(popularity.expand(len(chunk), -1), chunk.target, chunk.seq[:, 0])
             for chunk in (rows.take(slice(i, i + 1024)) for i in range(0, len(rows), 1024))]
    return ranking_metrics(torch.cat(ranks), ks)


def next_item_baselines(prepared: Any, ks: Sequence[int] = (5, 10, 20)) -> list[dict[str, Any]]:
    from recsys.data.modules import NextItemDataModule

    datamodule = NextItemDataModule(prepared)
    ks = tuple(sorted({int(k) for k in ks}))
    return [{"name": "most popular", "model": BASELINE_PREFIX + "most popular",
             "description": "items ranked by their number of training interactions, the user's history masked",
             "settings": {"ks": list(ks)},
             "val": most_popular_next_item(datamodule, "valid", ks), "test": most_popular_next_item(datamodule, "test", ks)}]


def dataset_baselines(prepared: Any, task: str, ks: Sequence[int] = (5, 10, 20)) -> dict[str, Any] | None:
    """The baselines of a prepared dataset for a task ("ctr" or "next_item"; None for another task),
    computed once and kept as baselines.json beside the prepared splits."""
    from recsys.features.atomic import write_json_atomic

    if task not in ("ctr", "next_item"):
        return None
    path = Path(prepared.directory) / BASELINES_FILE
    wanted = sorted({int(k) for k in ks})
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cached = {}
        if cached.get("version") == BASELINES_VERSION and cached.get("task") == task and set(wanted) <= set(cached.get("ks", wanted)):
            return cached
    rows = ctr_baselines(prepared) if task == "ctr" else next_item_baselines(prepared, wanted)
    payload = {"version": BASELINES_VERSION, "task": task, "dataset": prepared.name, "data_fingerprint": prepared.fingerprint,
               "synthetic_data": bool(getattr(prepared, "synthetic", False)), "baselines": rows}
    if task == "next_item":
        payload["ks"] = wanted
    write_json_atomic(path, payload)
    return payload


# ------------------------------------------------------------------------------------------- readers (no torch, no data)
def read_baselines(run_dir: str | Path) -> dict[str, Any] | None:
    """A run folder's baselines.json, or None (older runs, or a task without baselines)."""
    path = Path(run_dir) / BASELINES_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("baselines"), list) else None


def best_baseline(baselines: Iterable[Mapping[str, Any]], key: str, mode: str, split: str = "val") -> Mapping[str, Any] | None:
    """The baseline with the best `split` value of metric `key` (highest for mode max), if any has one."""
    scored = [b for b in baselines if isinstance((b.get(split) or {}).get(key), (int, float))
              and not math.isnan(float(b[split][key]))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda b: float(b[split][key]))


def beats(value: float, baseline: float, mode: str) -> bool:
    """Whether a run's value is strictly better than a baseline's under `mode`."""
    return value > baseline if mode == "max" else value < baseline


def baselines_of_runs(run_dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The distinct baselines of the data that these run folders trained on, one entry per (dataset, data
    fingerprint, baseline), each with `dataset` and `data_fingerprint` added."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run_dir in run_dirs:
        payload = read_baselines(run_dir)
        if payload is None:
            continue
        for b in payload["baselines"]:
            key = (str(payload.get("dataset")), str(payload.get("data_fingerprint")), str(b.get("model")))
            seen.setdefault(key, {**b, "dataset": key[0], "data_fingerprint": key[1]})
    return list(seen.values())
