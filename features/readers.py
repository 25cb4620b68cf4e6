"""Lazy readers for the raw formats the pipeline accepts: CSV/TSV, Parquet and libFM."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from recsys.features.errors import FeatureError

FORMATS = ("csv", "tsv", "parquet", "libfm")


def infer_format(path: str | Path) -> str:
    suffixes = [s.lower().lstrip(".") for s in Path(path).suffixes]
    for suffix in reversed(suffixes):
        if suffix in ("csv", "txt"):
            return "csv"
        if suffix in ("tsv", "tab"):
            return "tsv"
        if suffix in ("parquet", "pq"):
            return "parquet"
        if suffix in ("libfm", "svm", "libsvm"):
            return "libfm"
    raise FeatureError(f"cannot tell the format of {path}: name it as one of {FORMATS}")


def polars_dtype(column: str, value: str | pl.DataType) -> pl.DataType:
    """A Polars type from a config: a type, or its name as YAML gives it ("String", "Int64", "Float64", ...)."""
    if not isinstance(value, str):
        return value
    found = getattr(pl, value, None)
    if isinstance(found, type) and issubclass(found, pl.DataType):
        return found
    raise FeatureError(f"reader.schema_overrides: column {column!r} names {value!r}, which is not a Polars type; "
                       "use a name such as String, Int64, Int32, Float64, Float32 or Boolean")


def scan_table(
    path: str | Path,
    fmt: str | None = None,
    *,
    separator: str | None = None,
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    schema_overrides: dict[str, pl.DataType | str] | None = None,
    as_text: bool = False,
) -> pl.LazyFrame:
    """A LazyFrame over one raw file. Nothing is read until the frame is collected, so a transform
    over a large file can stream. `as_text=True` reads every CSV/TSV column as text, as written (for
    checking values before any type is inferred from the first rows)."""
    path = Path(path)
    if not path.exists():
        raise FeatureError(f"input file not found: {path}")
    fmt = fmt or infer_format(path)
    if schema_overrides:
        schema_overrides = {column: polars_dtype(column, value) for column, value in schema_overrides.items()}
    if fmt in ("csv", "tsv"):
        sep = separator or ("\t" if fmt == "tsv" else ",")
        lf = pl.scan_csv(
            path,
            separator=sep,
            has_header=has_header,
            new_columns=list(column_names) if column_names else None,
            schema_overrides=None if as_text else schema_overrides,
            infer_schema_length=0 if as_text else 10_000,
        )
    elif fmt == "parquet":
        lf = pl.scan_parquet(path)
        if column_names:
            lf = lf.rename(dict(zip(lf.collect_schema().names(), column_names)))
    elif fmt == "libfm":
        lf = scan_libfm(path, field_names=column_names)
    else:
        raise FeatureError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return lf


def scan_libfm(path: str | Path, field_names: Sequence[str] | None = None) -> pl.LazyFrame:
    """libFM lines `label idx:val idx:val ...` with one feature per field in a fixed order (as
    BARS writes Frappe and MovieLens). Gives `label` (-1 read as 0) and one integer column per
    position holding the feature index; a `<field>_value` float column is added for a position
    whose values are not all 1."""
    path = Path(path)
    with path.open() as handle:
        first = handle.readline().split()
    if not first:
        raise FeatureError(f"{path} is empty")
    n_fields = len(first) - 1
    names = list(field_names) if field_names else [f"f{i}" for i in range(n_fields)]
    if len(names) != n_fields:
        raise FeatureError(
            f"{path}: the first line has {n_fields} features but {len(names)} field names were given"
        )
    lines = pl.scan_csv(
        path, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
        schema_overrides={"line": pl.String},
    )
    tokens = pl.col("line").str.strip_chars().str.split(" ")
    pairs = [tokens.list.get(i + 1, null_on_oob=True).str.split_exact(":", 1) for i in range(n_fields)]
    label = tokens.list.get(0).cast(pl.Float64)
    lf = lines.select(
        pl.when(label <= 0).then(0.0).otherwise(label).alias("label"),
        *[pair.struct.field("field_0").cast(pl.Int64).alias(name) for pair, name in zip(pairs, names)],
        *[pair.struct.field("field_1").cast(pl.Float64).alias(f"{name}_value") for pair, name in zip(pairs, names)],
    )
    # Drop value columns that carry nothing (all 1): the usual one-hot case.
    value_cols = [f"{n}_value" for n in names]
    constant = lf.select([(pl.col(c) == 1.0).all().alias(c) for c in value_cols]).collect().row(0)
    keep = [c for c, is_one in zip(value_cols, constant) if not is_one]
    return lf.select(["label", *names, *keep])


def first_line(fmt: str, has_header: bool = True) -> int | None:
    """The file line of data row 1 (for messages), or None for a format without lines."""
    if fmt in ("csv", "tsv"):
        return 2 if has_header else 1
    return 1 if fmt == "libfm" else None


def explain_read_error(path: str | Path, err: Exception, fmt: str | None = None, *, separator: str | None = None,
                       has_header: bool = True) -> str:
    """What a reader's error means, with the line it happened on: the reader (Polars) says "invalid
    utf-8 sequence" or "found more fields than defined" without a line or a column. Only called on the
    error path: it reads the file again, line by line."""
    path = Path(path)
    fmt = fmt or infer_format(path)
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if path.stat().st_size == 0 or isinstance(err, pl.exceptions.NoDataError):
        return f"the file is empty ({path.stat().st_size} bytes, no header, no rows); it needs a header and at least one row"
    if fmt not in ("csv", "tsv"):
        return message
    sep = separator or ("\t" if fmt == "tsv" else ",")
    with path.open("rb") as handle:
        header = handle.readline()
    names = header.decode("utf-8", "replace").rstrip("\r\n").split(sep) if has_header else []
    if "utf-8" in message.lower() or "utf8" in message.lower():
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.decode("utf-8")
                    continue
                except UnicodeDecodeError:
                    pass
                for index, cell in enumerate(line.rstrip(b"\r\n").split(sep.encode())):
                    try:
                        cell.decode("utf-8")
                    except UnicodeDecodeError as bad:
                        column = repr(names[index]) if index < len(names) else f"number {index + 1}"
                        return (f"{_row(number, has_header)}: column {column} is not valid UTF-8 "
                                f"(bytes {cell[bad.start:bad.end + 3].hex(' ')} at byte {bad.start} of the cell)")
    if "fields" in message.lower():
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            rows = csv.reader(handle, delimiter=sep)
            width = len(next(rows, []))
            for cells in rows:
                if len(cells) > width:
                    return f"{_row(rows.line_num, has_header)}: {len(cells)} fields where the first line has {width}"
    return message


def _row(line: int, has_header: bool) -> str:
    return f"row {line - 1} (line {line})" if has_header else f"row {line} (line {line})"
