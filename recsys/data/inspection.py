"""What a dataset looks like to the models, from its data config and raw files, before any training: rows and
label rate per split; per field its kind, cardinality in train, null share, the share of values a model
meets in validation and test without having seen them in training (they all share the one
out-of-vocabulary row), and sequence lengths; and warnings for what will hurt a model.

`recsys data inspect` prints the whole of it; `recsys train` prints `summary()` (a line, and the
warnings) at its start. The vocabularies are the feature pipeline's own (`FeaturePipeline.fit`, with its
min_count and shared tables), fitted in memory when no prepared cache exists, so "unseen" means exactly
the values that become the out-of-vocabulary id. Only lazy scans of the raw files; nothing is written
except, by `cached_inspection`, one JSON file beside a prepared dataset.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys.features import FeatureError, FeaturePipeline, scan_table
from recsys.features.atomic import write_json_atomic
from recsys.features.pipeline import _dtype_kind

SPLITS = ("train", "valid", "test")
# Bump when what an inspection holds changes, so cached inspections are recomputed.
INSPECTION_VERSION = 1
INSPECTION_FILE = "inspection.json"
LENGTH_QUANTILES = (0.5, 0.9, 0.99)

# Warning thresholds (docs/data.md, "recsys data inspect").
RARE_LABEL = 0.005  # a positive (or negative) rate below this in train: the label is almost constant
UNIQUE_PER_ROW = 0.9  # distinct values / train rows above this: the field identifies rows
MIN_ROWS_FOR_UNIQUE = 100
HEAVY_UNSEEN = 0.5  # share of test values unseen in train, for a feature field
HEAVY_UNSEEN_TARGET = 0.1  # the same for a next-item target: an unseen target can never be recommended
MOSTLY_NULL = 0.5
LABEL_SHIFT = 0.5  # relative change of the label rate from train to test


@dataclass
class FieldProfile:
    name: str
    kind: str
    source: str
    role: str | None = None
    hashed: bool = False
    cardinality: int | None = None  # distinct non-null values (tokens of a sequence) in train
    vocabulary: int | None = None  # ids the model has for them (the table's, padding and out-of-vocabulary included)
    null_share: dict[str, float] = field(default_factory=dict)
    unseen_share: dict[str, float] = field(default_factory=dict)  # of non-null values (tokens), per split
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)  # sequence: p50, p90, p99, max per split
    cut_share: dict[str, float] = field(default_factory=dict)  # sequence: rows longer than max_len, per split
    max_len: int | None = None


@dataclass
class Inspection:
    name: str
    files: dict[str, str]
    rows: dict[str, int]
    label: str | None = None
    label_rate: dict[str, float | None] = field(default_factory=dict)
    fields: list[FieldProfile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    version: int = INSPECTION_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Inspection:
        raw = dict(raw)
        raw["fields"] = [FieldProfile(**f) for f in raw.get("fields") or []]
        return cls(**raw)

    # ------------------------------------------------------------------------------------ text
    def summary(self) -> str:
        """One line (rows, label rates, field count), then one line per warning."""
        rows = " / ".join(f"{self.rows.get(s, 0):,}" for s in SPLITS)
        line = f"data {self.name}: {rows} rows (train / valid / test)"
        if self.label is not None:
            line += ", label rate " + " / ".join(_pct(self.label_rate.get(s)) for s in SPLITS)
        line += f", {len(self.fields)} fields"
        if not self.warnings:
            return line + "; no warnings"
        return "\n".join([f"{line}; {len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''}:",
                          *(f"  - {w}" for w in self.warnings)])

    def table(self) -> str:
        """The whole inspection as aligned text tables."""
        out = [f"dataset {self.name}", *(f"  {s}: {self.files[s]}" for s in SPLITS if s in self.files), ""]
        split_rows = [["split", "rows", *(["label rate"] if self.label else [])]]
        for s in SPLITS:
            split_rows.append([s, f"{self.rows.get(s, 0):,}", *([_pct(self.label_rate.get(s))] if self.label else [])])
        out += _aligned(split_rows, right_from=1) + [""]
        header = ["field", "kind", "role", "cardinality", "null", "unseen valid", "unseen test", "length p50/p90/p99/max", "cut"]
        rows = [header]
        for f in self.fields:
            kind = f.kind + (" (hashed)" if f.hashed else "")
            length = cut = ""
            if f.lengths:
                length = " / ".join(_num(f.lengths.get("train", {}).get(k)) for k in ("p50", "p90", "p99", "max"))
                cut = _pct(f.cut_share.get("train"))
            null = f.null_share.get("valid" if f.kind == "target" else "train")
            rows.append([f.name, kind, f.role or "", _num(f.cardinality), _pct(null),
                         _pct(f.unseen_share.get("valid")), _pct(f.unseen_share.get("test")), length, cut])
        out += _aligned(rows, right_from=3)
        out += ["", "cardinality: distinct values in train (a sequence: distinct items); null: share of train rows without a value",
                "(a next-item target: of valid rows);",
                "unseen: share of a split's values not in the train vocabulary (they become the out-of-vocabulary id);",
                "length: train sequence lengths; cut: train rows longer than max_len (the oldest items are dropped).", ""]
        if self.warnings:
            out += ["warnings:", *(f"  - {w}" for w in self.warnings)]
        else:
            out.append("no warnings")
        return "\n".join(out) + "\n"


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}"


def _aligned(rows: list[list[str]], right_from: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


# ------------------------------------------------------------------------------------------- compute
def inspect_splits(files: Mapping[str, Path], reader: Mapping[str, Any], fields: list[Mapping[str, Any]], name: str,
                   pipeline: FeaturePipeline | None = None) -> Inspection:
    """Profile the raw split files of a dataset. `pipeline`: its fitted feature pipeline, if one exists (else
    fitted here, in memory, on train)."""
    frames = {split: scan_table(path, **reader) for split, path in files.items()}
    rows = {split: int(lf.select(pl.len()).collect().item()) for split, lf in frames.items()}
    result = Inspection(name=name, files={s: str(p) for s, p in files.items()}, rows=rows)
    if pipeline is None:
        pipeline = FeaturePipeline([dict(f) for f in fields])
        if rows.get("train"):
            pipeline.fit(frames["train"], check_values=False)
    schema = pipeline.schema
    kinds = {split: {n: _dtype_kind(t) for n, t in lf.collect_schema().items()} for split, lf in frames.items()}
    vocab = {table: v["token"] for table, v in pipeline.vocabs.items()}
    label = schema.label
    result.label = label.name if label else None

    profiles = {f.name: FieldProfile(f.name, f.kind, f.source, role=f.role, hashed=bool(f.hash_buckets),
                                     vocabulary=f.vocab_size, max_len=f.max_len)
                for f in schema.fields if f.kind != "label"}
    for split, lf in frames.items():
        if not rows[split]:
            continue
        exprs: list[pl.Expr] = []
        if label is not None and label.source in kinds[split]:
            exprs.append(pl.col(label.source).cast(pl.Float64, strict=False).mean().alias("__label_rate"))
        for f in schema.fields:
            if f.kind == "label" or f.source not in kinds[split]:
                continue
            if f.kind == "target" and split == "train":
                continue  # a next-item target is what valid and test ask for; train trains on the histories
            kind = kinds[split][f.source]
            col = pl.col(f.source)
            exprs.append(col.is_null().mean().alias(f"{f.name}.null"))
            if f.kind == "numeric" and not f.buckets:
                continue
            if f.kind == "sequence":
                tokens = FeaturePipeline._tokens(f, kind)
                lengths = tokens.list.len().fill_null(0)  # a missing history is an empty one, as the pipeline reads it
                exprs += [*(lengths.quantile(q, "nearest").alias(f"{f.name}.p{round(q * 100)}") for q in LENGTH_QUANTILES),
                          lengths.max().alias(f"{f.name}.max"), (lengths > f.max_len).mean().alias(f"{f.name}.cut")]
                if split == "train":
                    exprs.append(tokens.explode().drop_nulls().n_unique().alias(f"{f.name}.cardinality"))
                if f.vocab_key in vocab:
                    known = vocab[f.vocab_key]
                    exprs += [lengths.sum().alias(f"{f.name}.values"),
                              tokens.list.eval(~pl.element().is_in(known.implode())).list.sum().sum().alias(f"{f.name}.unseen")]
                continue
            if f.kind == "numeric":  # bucketised: every value has a bucket
                continue
            values = col.cast(pl.String)
            if split == "train":
                exprs.append(values.drop_nulls().n_unique().alias(f"{f.name}.cardinality"))
            exprs.append(values.is_not_null().sum().alias(f"{f.name}.values"))
            if f.kind == "group":  # not a model input: gAUC groups by it, seen in train or not
                continue
            if f.vocab_key in vocab:
                exprs.append((values.is_not_null() & ~values.is_in(vocab[f.vocab_key].implode())).sum().alias(f"{f.name}.unseen"))
            elif split != "train":  # hashed: every value gets a bucket, but one seen in train has a trained row
                seen = frames["train"].select(pl.col(f.source).cast(pl.String).drop_nulls().unique()).collect().to_series()
                exprs.append((values.is_not_null() & ~values.is_in(seen.implode())).sum().alias(f"{f.name}.unseen"))
        try:
            stats = lf.select(exprs).collect().row(0, named=True)
        except pl.exceptions.PolarsError as err:
            raise FeatureError(f"{split} split ({files[split]}): {str(err).strip().splitlines()[0]}") from err
        if "__label_rate" in stats:
            result.label_rate[split] = stats["__label_rate"]
        for name_, p in profiles.items():
            _fill(p, split, stats)
    result.fields = list(profiles.values())
    result.warnings = warnings_for(result)
    return result


def _fill(p: FieldProfile, split: str, stats: Mapping[str, Any]) -> None:
    def get(key: str) -> Any:
        return stats.get(f"{p.name}.{key}")

    if get("null") is not None:
        p.null_share[split] = float(get("null"))
    if get("cardinality") is not None:
        p.cardinality = int(get("cardinality"))
    values, unseen = get("values"), get("unseen")
    if values and unseen is not None:
        p.unseen_share[split] = float(unseen) / float(values)
    if get("max") is not None:
        p.lengths[split] = {f"p{round(q * 100)}": float(get(f"p{round(q * 100)}")) for q in LENGTH_QUANTILES}
        p.lengths[split]["max"] = float(get("max"))
        p.cut_share[split] = float(get("cut"))


def warnings_for(result: Inspection) -> list[str]:
    """What will hurt a model, one sentence each, the most serious first."""
    out = []
    for split in SPLITS:
        if not result.rows.get(split):
            out.append(f"the {split} split has no rows: training needs rows in all three splits")
    rate = result.label_rate
    if result.label is not None:
        train = rate.get("train")
        if train is not None and min(train, 1 - train) < RARE_LABEL:
            out.append(f"the label is almost constant in train ({_pct(train)} positive): a model learns little beyond "
                       "the rate, and AUC rests on a handful of rows")
        for split in ("valid", "test"):
            r = rate.get(split)
            if r is not None and r in (0.0, 1.0):
                out.append(f"the {split} split has only {'positive' if r == 1.0 else 'negative'} labels: AUC is undefined there")
        test = rate.get("test")
        if train and test is not None and 0 < train < 1 and abs(test - train) > LABEL_SHIFT * min(train, 1 - train):
            out.append(f"the label rate moves from {_pct(train)} in train to {_pct(test)} in test: expect a poor logloss "
                       "(calibration) even where the ranking (AUC) holds")
    train_rows = result.rows.get("train") or 0
    for f in result.fields:
        model_input = f.kind in ("categorical", "sequence", "numeric")
        if f.kind == "categorical" and f.cardinality is not None and train_rows >= MIN_ROWS_FOR_UNIQUE \
                and f.cardinality >= UNIQUE_PER_ROW * train_rows:
            out.append(f"field {f.name!r} is nearly unique per row ({f.cardinality:,} values in {train_rows:,} train rows): "
                       "a model memorises it and learns nothing that carries over; drop it or derive a coarser field")
        elif model_input and f.kind != "numeric" and f.cardinality is not None and f.cardinality <= 1 and train_rows:
            out.append(f"field {f.name!r} has {f.cardinality} distinct value in train: it carries no information")
        test_unseen = f.unseen_share.get("test")
        limit = HEAVY_UNSEEN_TARGET if f.kind == "target" else HEAVY_UNSEEN
        if test_unseen is not None and test_unseen > limit and f.kind in ("categorical", "sequence", "target"):
            what = ("test targets can never be recommended: they are not items of the training histories"
                    if f.kind == "target" else "a model sees one shared out-of-vocabulary embedding for them")
            out.append(f"field {f.name!r}: {_pct(test_unseen)} of its test values are unseen in train: {what}")
        null = f.null_share.get("train")
        if model_input and null is not None and null > MOSTLY_NULL:
            out.append(f"field {f.name!r} is empty in {_pct(null)} of train rows")
    return out


# ------------------------------------------------------------------------------------------- entry points
def inspect_dataset(data_cfg: Mapping[str, Any], cache_dir: str | Path) -> Inspection:
    """The inspection of a data config (the `data` group of a composed config, as a plain dict). Uses the
    prepared feature cache where one exists (its fitted vocabularies, and its saved inspection); never
    writes one."""
    from recsys.data.prepare import check_split, is_prepared, locate_prepared

    prepared, files, key = locate_prepared(data_cfg, cache_dir)
    if is_prepared(prepared):  # its raw files passed the checks below when it was prepared
        return cached_inspection(prepared, files, key["reader"], key["fields"])
    # What `recsys train` would refuse, for every split at once (train stops at the first). A split without
    # rows is one of the inspection's warnings instead, so the other splits are still described.
    problems = []
    for split, path in files.items():
        try:
            if path.stat().st_size and not scan_table(path, **key["reader"]).select(pl.len()).collect().item():
                continue
            check_split(FeaturePipeline(key["fields"]), split, path, key["reader"])
        except FeatureError as err:
            problems.append(str(err))
        except pl.exceptions.PolarsError as err:
            problems.append(f"{split} split ({path}): {str(err).strip().splitlines()[0]}")
    if problems:
        raise FeatureError("; ".join(problems))
    return inspect_splits(files, key["reader"], key["fields"], prepared.name)


def cached_inspection(prepared: Any, files: Mapping[str, Path], reader: Mapping[str, Any],
                      fields: list[Mapping[str, Any]]) -> Inspection:
    """The inspection of a prepared dataset (a `PreparedData`), computed once with its fitted pipeline and
    kept beside it as inspection.json."""
    path = Path(prepared.directory) / INSPECTION_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") == INSPECTION_VERSION:
                return Inspection.from_dict(raw)
        except (OSError, json.JSONDecodeError, TypeError):
            pass  # recomputed below
    result = inspect_splits(files, reader, fields, prepared.name, FeaturePipeline.load(prepared.features_dir))
    write_json_atomic(path, result.to_dict())
    return result
