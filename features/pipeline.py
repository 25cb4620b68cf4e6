"""Fit on the training split, transform any split, and transform raw serving requests with the same
saved artifacts: `schema.json` plus one Parquet vocabulary per table. No pickle.

Output columns (what the data module and the serving endpoint turn into a `Batch`):
- a sparse field -> Int64 id (0 padding, 1 out-of-vocabulary, 2.. known values or hash buckets);
- a dense numeric field -> Float32 after fill and normalisation;
- a sequence field -> Array(Int64, max_len), the most recent `max_len` items, left-padded with 0;
- the label -> Float32 in {0, 1}; the group -> Int64 id; a next-item target -> Int64 id of its sequence's
  vocabulary (out-of-vocabulary, 1, when missing).

Raw numeric values, the same rule in fit, transform and the serving encoder (`records.RecordEncoder`):
- null, an empty cell and NaN are missing: they take the field's fitted `fill`, and fitting leaves them
  out of the statistics;
- a value that is not a number (`"N/A!"`) and an infinite one (`inf`, `-Infinity`, `1e309`) are refused
  with a FeatureError naming the column and the row (the endpoint: the instance and the field, as a 422);
- a dense field's finite value outside the range fitting saw is clipped to that range [min, max] before
  normalisation: the model is never asked about inputs beyond those it was trained on (a bucketed field
  already puts such a value in its first or last bucket).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.features.atomic import atomic_directory
from recsys.features.errors import FeatureError
from recsys.features.hashing import bucket_expr, with_int64_hash, with_string_fold
from recsys.features.schema import OOV_ID, FieldSpec, Schema

Frame = pl.DataFrame | pl.LazyFrame
_INT_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOAT_TYPES = (pl.Float32, pl.Float64)
HASH_SEED = 0x5EED


def normalise(x: Any, f: FieldSpec, signed_log1p: Any) -> Any:
    """A dense field's fitted normalisation, written once for a Polars expression (training transform)
    and a NumPy array (the serving encoder): both support the same arithmetic; only the signed log1p
    is spelled differently, so the caller passes it."""
    s = f.stats
    if f.norm == "standard":
        return (x - s["mean"]) / (s["std"] if s["std"] > 0 else 1.0)
    if f.norm == "minmax":
        span = s["max"] - s["min"]
        return (x - s["min"]) / (span if span > 0 else 1.0)
    if f.norm == "log":
        return signed_log1p(x)
    return x


def _dtype_kind(dtype: pl.DataType) -> str:
    if dtype in _INT_TYPES or isinstance(dtype, _INT_TYPES):
        return "int"
    if dtype in _FLOAT_TYPES or isinstance(dtype, _FLOAT_TYPES):
        return "float"
    if dtype == pl.String or isinstance(dtype, pl.String):
        return "str"
    if isinstance(dtype, (pl.List, pl.Array)):
        return "list"
    if dtype == pl.Boolean:
        return "int"
    if dtype == pl.Null:
        return "null"
    return str(dtype)


class FeaturePipeline:
    """`FeaturePipeline(fields).fit(train)` learns vocabularies and statistics; `transform` applies them."""

    SCHEMA_FILE = "schema.json"
    VOCAB_DIR = "vocab"

    def __init__(self, fields: Sequence[FieldSpec | Mapping[str, Any]] | Schema):
        if isinstance(fields, Schema):
            self.schema = fields
        else:
            specs = [f if isinstance(f, FieldSpec) else FieldSpec.from_dict(dict(f)) for f in fields]
            self.schema = Schema(specs)
        self.vocabs: dict[str, pl.DataFrame] = {}  # table -> (token: String, id: Int64)
        self.fitted = False

    # ------------------------------------------------------------------ checks
    def _check_columns(self, frame: Frame, *, need_label: bool, context: str) -> dict[str, str]:
        present = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
        kinds = {name: _dtype_kind(dtype) for name, dtype in present.items()}
        for f in self.schema.fields:
            if f.kind in ("label", "group", "target") and not need_label:
                continue  # serving requests carry none of them
            if f.source not in kinds:
                raise FeatureError(
                    f"{context}: column {f.source!r} (field {f.name!r}) is missing; "
                    f"the input has columns {sorted(kinds)}"
                )
            kind = kinds[f.source]
            if kind == "null":
                continue
            if f.kind == "sequence" and kind not in ("str", "list"):
                raise FeatureError(
                    f"{context}: sequence field {f.name!r} needs a delimited string or a list column, "
                    f"got {present[f.source]}"
                )
            if f.kind in ("numeric", "label") and kind not in ("int", "float", "str"):
                raise FeatureError(f"{context}: field {f.name!r} needs numbers, got {present[f.source]}")
            if f.kind in ("categorical", "group", "target") and kind == "list":
                raise FeatureError(f"{context}: categorical field {f.name!r} got a list column {present[f.source]}")
            if self.fitted and f.raw_dtype and f.kind in ("categorical", "group") and f.hash_buckets:
                if kind != f.raw_dtype and not (f.raw_dtype == "int" and kind == "str"):
                    raise FeatureError(
                        f"{context}: hashed field {f.name!r} was fitted on {f.raw_dtype} values but got {kind}"
                    )
        return kinds

    @staticmethod
    def _collect(frame: Frame, what: str) -> pl.DataFrame:
        try:
            # The streaming engine: aggregates and group-bys hold their state (the vocabulary), not the rows.
            return frame.collect(engine="streaming") if isinstance(frame, pl.LazyFrame) else frame
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as err:
            raise FeatureError(f"{what}: {err}") from err

    def check_values(self, frame: Frame, where: str, *, need_label: bool = True, first_line: int | None = None) -> int:
        """Refuse a frame without the schema's columns, with no rows, with a numeric value that is neither
        a number nor missing, an infinite numeric value, or a label other than 0 and 1, naming `where` (e.g.
        "valid split (path)"), the row and the column; returns the row count. One aggregate pass; the
        offending row is looked up only when there is one. `first_line` is the file line of row 1 (2 for a
        CSV with a header), if it has lines. A frame that cannot be read raises FeatureError whose
        __cause__ is the reader's error."""
        lf = frame.lazy()
        try:
            present = set(self._check_columns(lf, need_label=need_label, context=where))
        except pl.exceptions.PolarsError as err:  # a CSV reader infers its header here
            raise FeatureError(f"{where}: {str(err).strip().splitlines()[0]}") from err
        checks: dict[str, tuple[FieldSpec, pl.Expr, str]] = {}
        for f in self.schema.fields:
            if f.source not in present or f.kind not in ("numeric", "label"):
                continue  # a missing column is _check_columns' error
            raw = pl.col(f.source)
            x = raw.cast(pl.Float64, strict=False)
            if f.kind == "label":
                checks[f.name] = (f, x.is_null() | ~x.is_in([0.0, 1.0]), "labels must be 0 or 1")
            else:
                checks[f.name] = (f, raw.is_not_null() & (x.is_null() | x.is_infinite()),
                                  "numeric values must be finite numbers (empty, null or NaN means missing)")
        try:
            # The streaming engine: a split larger than memory is checked at flat memory.
            counts = lf.select(pl.len().alias("__rows"), *[bad.sum().alias(name) for name, (_, bad, _) in checks.items()]
                               ).collect(engine="streaming")
        except pl.exceptions.PolarsError as err:
            raise FeatureError(f"{where}: {str(err).strip().splitlines()[0]}") from err
        rows = counts["__rows"].item()
        if rows == 0:
            raise FeatureError(f"{where} is empty: it has no rows{' (a header only)' if first_line else ''}")
        for name, (f, bad, rule) in checks.items():
            n_bad = counts[name].item()
            if not n_bad:
                continue
            index, value = lf.with_row_index("__row").filter(bad).select("__row", f.source).head(1).collect().row(0)
            line = f" (line {index + first_line})" if first_line is not None else ""
            what = "label column" if f.kind == "label" else "column"
            raise FeatureError(f"{where}, row {index + 1}{line}: {what} {f.source!r} holds {str(value)!r}; {rule} "
                               f"({n_bad} such row{'s' if n_bad > 1 else ''})")
        return rows

    @staticmethod
    def _numeric(f: FieldSpec) -> pl.Expr:
        """The raw numeric column as Float64, NaN as missing (null). Values were checked by check_values."""
        return pl.col(f.source).cast(pl.Float64, strict=False).fill_nan(None)

    @staticmethod
    def _tokens(f: FieldSpec, kind: str) -> pl.Expr:
        """The sequence column as a list of string tokens, empty tokens dropped."""
        col = pl.col(f.source)
        lst = col.str.split(f.sep) if kind == "str" else col.cast(pl.List(pl.String))
        return lst.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))

    # ------------------------------------------------------------------ fit
    def fit(self, frame: Frame, *, check_values: bool = True) -> FeaturePipeline:
        """Learn vocabularies and statistics from `frame` (the training split). `check_values=False` skips
        `check_values` for a caller that has already run it on this data (prepare_dataset, up front)."""
        lf = frame.lazy()
        kinds = self._check_columns(lf, need_label=True, context="fit")
        if check_values:
            n_rows = self.check_values(lf, "fit input")
        else:
            n_rows = self._collect(lf.select(pl.len()), "fit").item()

        stats_exprs: list[pl.Expr] = []
        for f in self.schema.fields:
            f.raw_dtype = kinds.get(f.source) if kinds.get(f.source) != "list" else "str"
            if f.kind == "numeric":
                x = self._numeric(f)
                stats_exprs += [
                    x.mean().alias(f"{f.name}.mean"), x.std().alias(f"{f.name}.std"),
                    x.min().alias(f"{f.name}.min"), x.max().alias(f"{f.name}.max"),
                ]
        stats = self._collect(lf.select(stats_exprs), "fit numeric statistics").row(0, named=True) if stats_exprs else {}
        quantile_frame, sample_every = self._quantile_frame(lf, n_rows)
        medians = [self._numeric(f).median().alias(f"{f.name}.median") for f in self.schema.fields if f.kind == "numeric"]
        if medians:
            stats.update(self._collect(quantile_frame.select(medians), "fit numeric medians").row(0, named=True))

        for f in self.schema.fields:
            if f.kind != "numeric":
                continue
            s = {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith(f.name + ".")}
            fill = s[f.fill] if isinstance(f.fill, str) else float(f.fill)
            if isinstance(f.fill, str) and f.fill not in ("mean", "median"):
                raise FeatureError(f"numeric field {f.name!r}: fill must be a number, 'mean' or 'median'")
            f.stats = {k: (0.0 if v is None else float(v)) for k, v in s.items()}
            f.stats["fill"] = 0.0 if fill is None else float(fill)
            if f.is_dense:
                ends = normalise(np.array([f.stats["min"], f.stats["max"]], dtype=np.float64), f,
                                 lambda v: np.sign(v) * np.log1p(np.abs(v)))
                with np.errstate(over="ignore"):  # the overflow is what is being checked
                    fits = np.isfinite(ends.astype(np.float32)).all()
                if not fits:
                    raise FeatureError(
                        f"numeric field {f.name!r}: values from {f.stats['min']:.3g} to {f.stats['max']:.3g} do not fit "
                        f"float32 after norm {f.norm!r}; use norm: log or standard"
                    )
            if sample_every > 1:
                f.stats["quantiles_sample_every"] = float(sample_every)  # median and buckets are estimates
            if f.buckets:
                filled = self._numeric(f).fill_null(f.stats["fill"])
                qs = [i / f.buckets for i in range(1, f.buckets)]
                row = self._collect(quantile_frame.select([filled.quantile(q).alias(str(q)) for q in qs]), f.name).row(0)
                f.stats["boundaries"] = sorted({float(v) for v in row if v is not None})
                f.vocab_size = len(f.stats["boundaries"]) + 3  # pad, oov, len+1 buckets

        # Vocabularies: one per table, fitted on every field that draws ids from it.
        by_table: dict[str, list[FieldSpec]] = {}
        for f in self.schema.fields:
            if f.kind in ("categorical", "sequence", "group", "target"):
                by_table.setdefault(f.vocab_key, []).append(f)
        counts: dict[str, pl.LazyFrame] = {}
        for table, members in by_table.items():
            hashed = [m for m in members if m.hash_buckets]
            if hashed:
                size = hashed[0].hash_buckets + 2
                for m in members:
                    m.vocab_size = size
                    if m.kind == "categorical" and m.raw_dtype == "str":
                        m.stats["max_bytes"] = int(
                            self._collect(lf.select(pl.col(m.source).cast(pl.String).str.len_bytes().max()), m.name).item() or 1
                        )
                continue
            counts[table] = self._token_counts(lf, members, kinds)
        for table, query in counts.items():
            # One streaming query per table: `pl.collect_all` would read the input once for all tables, but
            # its shared reader buffers rows for the slower queries (its memory grew with the rows).
            vocab = self._collect(query, f"vocabulary {table!r}")
            vocab = vocab.with_row_index("id", offset=OOV_ID + 1).with_columns(pl.col("id").cast(pl.Int64))
            self.vocabs[table] = vocab.select("token", "id", "count")
            for m in by_table[table]:
                m.vocab_size = vocab.height + 2
        self.fitted = True
        return self

    # Above this many rows, medians and quantile-bucket boundaries are computed on every k-th row (k the
    # smallest that leaves at most this many): an exact quantile needs the whole column in memory, which
    # would make the fit's memory grow with the rows. On rows in no particular order, the estimate of the
    # p-quantile from m sampled rows is off by about sqrt(p (1 - p) / m) in rank (0.04% of the rows for
    # the median from 2M); the schema records k as stats["quantiles_sample_every"].
    QUANTILE_SAMPLE_ROWS = 2_000_000

    def _quantile_frame(self, lf: pl.LazyFrame, n_rows: int) -> tuple[pl.LazyFrame, int]:
        """The rows exact or estimated quantiles are computed on, and k (1 when every row is used)."""
        if n_rows <= self.QUANTILE_SAMPLE_ROWS:
            return lf, 1
        every = -(-n_rows // self.QUANTILE_SAMPLE_ROWS)
        sample = lf.with_row_index("__row").filter(pl.col("__row") % every == 0).drop("__row")
        return sample, every

    def _token_counts(self, lf: pl.LazyFrame, members: list[FieldSpec], kinds: dict[str, str]) -> pl.LazyFrame:
        """(token, count) of one table over every field that draws ids from it, those below the table's
        min_count dropped, in id order (most frequent first, then by token). An integer column is grouped
        on its values and only the distinct values become strings (the same tokens, a fraction of the
        work); each field is counted alone and the counts summed, the map-reduce shape that a cluster
        engine runs per partition (docs/scale.md)."""
        parts = []
        for m in members:
            if m.kind == "sequence":
                tokens = lf.select(self._tokens(m, kinds[m.source]).alias("token")).explode("token")
            elif kinds[m.source] == "int":
                tokens = lf.select(pl.col(m.source).alias("token"))
            else:
                tokens = lf.select(pl.col(m.source).cast(pl.String).alias("token"))
            parts.append(
                tokens.drop_nulls().group_by("token").agg(pl.len().cast(pl.Int64).alias("count"))
                .with_columns(pl.col("token").cast(pl.String))
            )
        merged = parts[0] if len(parts) == 1 else pl.concat(parts).group_by("token").agg(pl.col("count").sum())
        min_count = max(m.min_count for m in members)
        return merged.filter(pl.col("count") >= min_count).sort(["count", "token"], descending=[True, False])

    # ------------------------------------------------------------------ transform
    def transform(self, frame: Frame, *, require_label: bool = True, check_values: bool = True) -> pl.LazyFrame:
        """A lazy frame of model-ready columns. `require_label=False` is for serving requests: the label
        and group columns are then optional, and left out when absent. The values are checked first
        (`check_values`, one pass over the numeric and label columns) unless the caller already did."""
        if not self.fitted:
            raise FeatureError("transform before fit: call fit() or load() first")
        lf = frame.lazy()
        kinds = self._check_columns(lf, need_label=require_label, context="transform")
        if check_values:
            self.check_values(lf, "transform input", need_label=require_label)
        outputs: list[str] = []
        for f in self.schema.fields:
            if f.kind in ("label", "group", "target") and f.source not in kinds:
                continue
            if f.kind == "label":
                # check_values refuses a label outside {0, 1}; were it skipped, such a label becomes NaN.
                y = pl.col(f.source).cast(pl.Float64, strict=False)
                lf = lf.with_columns(
                    pl.when(y.is_in([0.0, 1.0])).then(y).otherwise(float("nan")).cast(pl.Float32).alias(f"__out_{f.name}")
                )
            elif f.kind == "numeric":
                lf = lf.with_columns(self._numeric_expr(f).alias(f"__out_{f.name}"))
            elif f.kind == "sequence":
                lf = lf.with_columns(self._sequence_expr(f, kinds[f.source]).alias(f"__out_{f.name}"))
            elif f.hash_buckets:
                lf = self._with_hashed(lf, f, kinds[f.source])
            else:
                lf = self._with_lookup(lf, f)
            outputs.append(f.name)
        return lf.select([pl.col(f"__out_{n}").alias(n) for n in outputs])

    def _vocab_maps(self, f: FieldSpec) -> tuple[pl.Series, pl.Series]:
        vocab = self.vocabs[f.vocab_key]
        return vocab["token"], vocab["id"]

    def _with_lookup(self, lf: pl.LazyFrame, f: FieldSpec) -> pl.LazyFrame:
        """`f`'s ids as a left join on its vocabulary (rows kept in order). A join streams: its hash table
        is the vocabulary's and the rows flow past it, where `replace_strict` over a column holds the
        whole column (its memory grows with the rows)."""
        key, out = f"__key_{f.name}", f"__out_{f.name}"
        vocab = self.vocabs[f.vocab_key].lazy().select(pl.col("token").alias(key), pl.col("id").alias(out))
        lf = lf.with_columns(pl.col(f.source).cast(pl.String).alias(key))
        lf = lf.join(vocab, on=key, how="left", maintain_order="left")
        return lf.with_columns(pl.col(out).fill_null(OOV_ID)).drop(key)

    def _with_hashed(self, lf: pl.LazyFrame, f: FieldSpec, kind: str) -> pl.LazyFrame:
        out = f"__out_{f.name}"
        if f.raw_dtype == "int":
            key = pl.col(f.source).cast(pl.Int64, strict=False) if kind == "str" else pl.col(f.source).cast(pl.Int64)
            lf = lf.with_columns(key.alias(f"__key_{f.name}"))
        else:
            lf = with_string_fold(lf, f.source, f"__key_{f.name}", f.stats.get("max_bytes", 64))
        lf = with_int64_hash(lf, f"__key_{f.name}", f"__hash_{f.name}", seed=HASH_SEED)
        return lf.with_columns(
            bucket_expr(pl.col(f"__hash_{f.name}"), f.hash_buckets).fill_null(OOV_ID).alias(out)
        )

    def _numeric_expr(self, f: FieldSpec) -> pl.Expr:
        s = f.stats
        x = self._numeric(f)
        if f.buckets:
            x = x.fill_null(s["fill"])
            bounds = s["boundaries"]
            # Bucket i holds (bounds[i-1], bounds[i]]: i is how many bounds lie below x. Counted with one
            # comparison per bound, row by row, which streams (search_sorted held the whole column).
            position = pl.sum_horizontal([x > b for b in bounds]) if bounds else pl.lit(0)
            return (position.cast(pl.Int64) + OOV_ID + 1).fill_null(OOV_ID)
        # Clipped to the fitted range before the fill, so a fill outside the range stays as configured.
        x = x.clip(s["min"], s["max"]).fill_null(s["fill"])
        return normalise(x, f, lambda v: v.sign() * v.abs().log1p()).cast(pl.Float32)

    def _sequence_expr(self, f: FieldSpec, kind: str) -> pl.Expr:
        tokens, ids = self._vocab_maps(f)
        recent = self._tokens(f, kind).list.tail(f.max_len)
        encoded = recent.list.eval(
            pl.element().replace_strict(tokens, ids, default=OOV_ID, return_dtype=pl.Int64)
        )
        padding = pl.lit(pl.Series([[0] * f.max_len], dtype=pl.List(pl.Int64)))
        padded = pl.concat_list(padding, encoded.fill_null(pl.lit(pl.Series([[]], dtype=pl.List(pl.Int64)))))
        return padded.list.tail(f.max_len).list.to_array(f.max_len)

    def transform_records(self, records: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
        """Transform raw serving requests (a list of dicts, field values as sent) with the fitted
        artifacts. Fields missing from a record are an error; unseen values become out-of-vocabulary."""
        if not records:
            raise FeatureError("no records to transform")
        needed = [f for f in self.schema.fields if f.kind not in ("label", "group", "target")]
        columns: dict[str, list[Any]] = {}
        for f in needed:
            values = []
            for i, record in enumerate(records):
                if f.source not in record:
                    raise FeatureError(f"record {i}: field {f.source!r} is missing")
                values.append(record[f.source])
            columns[f.source] = values
        frame_schema: dict[str, pl.DataType] = {}
        for f in needed:
            if f.kind == "numeric":
                frame_schema[f.source] = pl.Float64
            elif f.kind == "sequence":
                is_list = any(isinstance(v, (list, tuple)) for v in columns[f.source])
                frame_schema[f.source] = pl.List(pl.String) if is_list else pl.String
                if is_list:
                    columns[f.source] = [None if v is None else [str(x) for x in v] for v in columns[f.source]]
            elif f.hash_buckets and f.raw_dtype == "int":
                frame_schema[f.source] = pl.Int64
            else:
                frame_schema[f.source] = pl.String
                columns[f.source] = [None if v is None else str(v) for v in columns[f.source]]
        try:
            frame = pl.DataFrame(columns, schema=frame_schema, strict=False)
        except (TypeError, pl.exceptions.PolarsError) as err:
            raise FeatureError(f"records do not match the schema: {err}") from err
        for f in needed:
            if f.kind == "numeric" or (f.hash_buckets and f.raw_dtype == "int"):
                bad = [i for i, (v, c) in enumerate(zip(columns[f.source], frame[f.source])) if v is not None and c is None]
                if bad:
                    raise FeatureError(
                        f"field {f.source!r} needs a number; record {bad[0]} has {columns[f.source][bad[0]]!r}"
                    )
        targets = [f.name for f in self.schema.fields if f.kind in ("label", "group", "target")]
        return self.transform(frame, require_label=False).collect().drop(targets, strict=False)

    # ------------------------------------------------------------------ artifacts
    def save(self, directory: str | Path) -> Path:
        """Write schema.json and vocab/<table>.parquet atomically (a temp dir renamed into place)."""
        if not self.fitted:
            raise FeatureError("save before fit")
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.schema.save(tmp / self.SCHEMA_FILE)
            (tmp / self.VOCAB_DIR).mkdir()
            for table, vocab in self.vocabs.items():
                vocab.write_parquet(tmp / self.VOCAB_DIR / f"{table}.parquet")
        return directory

    def row_counts(self) -> dict[str, np.ndarray]:
        """Per vocabulary table, how often each id occurred in the training data (index = id; padding and
        out-of-vocabulary count 0; hashed tables have none): the n_j of DIN's mini-batch-aware regulariser."""
        sizes = self.schema.table_sizes()
        counts = {}
        for table, vocab in self.vocabs.items():
            if table not in sizes:  # the group field's ids are not an embedding table
                continue
            row = np.zeros(sizes[table], dtype=np.int64)
            row[vocab["id"].to_numpy()] = vocab["count"].to_numpy()
            counts[table] = row
        return counts

    @classmethod
    def load(cls, directory: str | Path) -> FeaturePipeline:
        directory = Path(directory)
        pipeline = cls(Schema.load(directory / cls.SCHEMA_FILE))
        for f in pipeline.schema.fields:
            if f.kind in ("categorical", "sequence", "group", "target") and not f.hash_buckets and f.vocab_key not in pipeline.vocabs:
                path = directory / cls.VOCAB_DIR / f"{f.vocab_key}.parquet"
                if not path.exists():
                    raise FeatureError(f"vocabulary for table {f.vocab_key!r} is missing: {path}")
                pipeline.vocabs[f.vocab_key] = pl.read_parquet(path)
        pipeline.fitted = True
        return pipeline

    def describe(self) -> str:
        return json.dumps({f.name: {"kind": f.kind, "vocab_size": f.vocab_size} for f in self.schema.fields}, indent=1)
