"""Raw serving requests -> Batch arrays without a Polars frame per request.

`FeaturePipeline.transform_records` builds a DataFrame and runs the lazy transform; that costs about a
millisecond per call whatever the row count (README, "Serving"), a fifth of the 5 ms budget for one
candidate. `RecordEncoder` applies the same fitted artifacts with dictionary lookups and NumPy, and a
test checks it against the Polars transform on the same records. Hashed categorical fields still go
through the Polars hashing stages (one small frame per request), the one definition of that hash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from recsys.features.errors import FeatureError
from recsys.features.pipeline import FeaturePipeline, normalise
from recsys.features.schema import OOV_ID, PAD_ID, FieldSpec


class SequenceTooLong(FeatureError):
    """A raw sequence over the caller's item limit (the endpoint answers it with its own error code)."""


_SCALARS = (str, int, float, bool)


def _shown(value: Any) -> str:
    """A short repr of a client's value for an error message (a huge int is described, not printed)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

_UNSET = object()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SCALAR_TYPES = frozenset(_SCALARS)


class RecordEncoder:
    """Encodes a list of raw records (field values by source column name) into the three Batch groups:
    sparse int64[B, F_sparse], dense float32[B, F_dense], seq int64[B, F_seq, L].

    Rules (the same as the Polars transform): categorical values are looked up as strings, so 7 and "7"
    are one token; unseen values and null are out-of-vocabulary (id 1). Numeric values are numbers or
    numeric strings; null and NaN take the fitted fill; an infinite value is refused; a dense field's
    value outside the fitted [min, max] is clipped to it (features.pipeline, "Raw numeric values"). A
    sequence is a list of tokens or one string delimited by the field's `sep`; empty and null tokens are
    dropped and the most recent `max_len` kept.
    """

    def __init__(self, pipeline: FeaturePipeline):
        if not pipeline.fitted:
            raise FeatureError("RecordEncoder needs a fitted (or loaded) pipeline")
        self.pipeline = pipeline
        schema = pipeline.schema
        self.sparse_fields = schema.sparse
        self.dense_fields = schema.dense
        self.sequence_fields = schema.sequence
        lengths = {f.max_len for f in self.sequence_fields}
        if len(lengths) > 1:
            raise FeatureError(f"sequence fields must share one max_len in a Batch, got {sorted(lengths)}")
        self.seq_len = lengths.pop() if lengths else 0
        self._ids: dict[str, dict[str, int]] = {
            table: dict(zip(vocab["token"].to_list(), vocab["id"].to_list())) for table, vocab in pipeline.vocabs.items()
        }

    @property
    def input_fields(self) -> list[FieldSpec]:
        """The raw fields a request must carry, in tensor order."""
        return self.sparse_fields + self.dense_fields + self.sequence_fields

    # ------------------------------------------------------------------ per field
    @staticmethod
    def _column(records: Sequence[Mapping[str, Any]], f: FieldSpec) -> list[Any]:
        source = f.source
        try:
            return [r[source] for r in records]
        except KeyError:
            row = next(i for i, r in enumerate(records) if source not in r)
            raise FeatureError(f"instance {row}: field {source!r} is missing") from None

    def _categorical(self, f: FieldSpec, values: list[Any]) -> list[int]:
        get = self._ids[f.vocab_key].get
        out = []
        for v in values:
            kind = type(v)
            if kind is str:
                out.append(get(v, OOV_ID))
            elif v is None:
                out.append(OOV_ID)
            elif kind in _SCALAR_TYPES:
                out.append(get(str(v), OOV_ID))
            else:
                row = len(out)
                raise FeatureError(f"instance {row}: categorical field {f.source!r} needs a string or a number, got {kind.__name__}")
        return out

    @staticmethod
    def _number(f: FieldSpec, v: Any, row: int) -> float | None:
        """The raw value as a float; None for missing (null, NaN); FeatureError for a non-number or infinity."""
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise FeatureError(f"instance {row}: numeric field {f.source!r} needs a number, got {type(v).__name__}")
        try:
            x = float(v)
        except ValueError:
            raise FeatureError(f"instance {row}: numeric field {f.source!r} needs a number, got {_shown(v)}") from None
        except OverflowError:  # an integer beyond float's range
            x = math.inf
        if x - x != 0.0:  # NaN or infinite (one test for both on the common path)
            if x != x:
                return None
            raise FeatureError(f"instance {row}: numeric field {f.source!r} is {_shown(v)}; numbers must be finite "
                               "(null or NaN means missing and takes the fitted fill)")
        return x

    def _bucketed(self, f: FieldSpec, values: list[Any]) -> list[int]:
        fill = f.stats["fill"]
        x = np.array([fill if (n := self._number(f, v, row)) is None else n for row, v in enumerate(values)], dtype=np.float64)
        bounds = np.asarray(f.stats["boundaries"], dtype=np.float64)
        return (np.searchsorted(bounds, x, side="left") + OOV_ID + 1).tolist()

    def _dense(self, f: FieldSpec, values: list[Any]) -> np.ndarray:
        s = f.stats
        lo, hi, fill = s["min"], s["max"], s["fill"]
        out = []
        for row, v in enumerate(values):  # clipped here, per value: np.clip costs more than this for a few rows
            n = self._number(f, v, row)
            out.append(fill if n is None else lo if n < lo else hi if n > hi else n)
        return normalise(np.array(out, dtype=np.float64), f, lambda v: np.sign(v) * np.log1p(np.abs(v))).astype(np.float32)

    def _hashed(self, f: FieldSpec, values: list[Any]) -> list[int]:
        for row, v in enumerate(values):
            if v is not None and not isinstance(v, _SCALARS):
                raise FeatureError(f"instance {row}: categorical field {f.source!r} needs a string or a number, got {type(v).__name__}")
        if f.raw_dtype == "int":
            keys = []
            for v in values:
                try:
                    key = None if v is None else int(v)
                except (TypeError, ValueError, OverflowError):
                    key = None  # as the Polars cast: a non-integer becomes null, then out-of-vocabulary
                keys.append(key if key is None or _INT64_MIN <= key <= _INT64_MAX else None)  # so is one beyond int64
            frame = pl.DataFrame({f.source: keys}, schema={f.source: pl.Int64})
            kind = "int"
        else:
            frame = pl.DataFrame({f.source: [None if v is None else str(v) for v in values]}, schema={f.source: pl.String})
            kind = "str"
        hashed = self.pipeline._with_hashed(frame.lazy(), f, kind).collect()
        return hashed[f"__out_{f.name}"].to_list()

    def _tokens(self, f: FieldSpec, value: Any, row: int, max_items: int | None) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            items = value.split(f.sep)
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            raise FeatureError(f"instance {row}: sequence field {f.source!r} needs a list or a {f.sep!r}-delimited string, got {type(value).__name__}")
        if max_items is not None and len(items) > max_items:
            raise SequenceTooLong(
                f"instance {row}: sequence field {f.source!r} has {len(items)} items; at most {max_items} are accepted "
                f"(the model reads the most recent {f.max_len})"
            )
        tokens = []
        for item in items:
            if item is None:
                continue
            if not isinstance(item, _SCALARS):
                raise FeatureError(f"instance {row}: sequence field {f.source!r} holds a {type(item).__name__}; items must be strings or numbers")
            token = str(item)
            if token:
                tokens.append(token)
        return tokens[-f.max_len:]

    # ------------------------------------------------------------------ all fields
    def encode(self, records: Sequence[Mapping[str, Any]], *, max_sequence_items: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sparse, dense, seq) arrays for `records`. `max_sequence_items` refuses longer raw sequences
        (a request-size guard); below it, sequences are truncated to `max_len` as in training."""
        n = len(records)
        if n == 0:
            raise FeatureError("no records to encode")
        for row, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise FeatureError(f"instance {row} is a {type(record).__name__}, not an object of field values")
        sparse = np.empty((n, len(self.sparse_fields)), dtype=np.int64)
        for j, f in enumerate(self.sparse_fields):
            values = self._column(records, f)
            if f.kind == "numeric":
                sparse[:, j] = self._bucketed(f, values)
            elif f.hash_buckets:
                sparse[:, j] = self._hashed(f, values)
            else:
                sparse[:, j] = self._categorical(f, values)
        dense = np.empty((n, len(self.dense_fields)), dtype=np.float32)
        for j, f in enumerate(self.dense_fields):
            dense[:, j] = self._dense(f, self._column(records, f))
        seq = np.full((n, len(self.sequence_fields), self.seq_len), PAD_ID, dtype=np.int64)
        for j, f in enumerate(self.sequence_fields):
            ids = self._ids[f.vocab_key]
            previous = _UNSET
            for row, value in enumerate(self._column(records, f)):
                if value is previous:
                    # The same object as the row before: one user's history shared by its candidates
                    # (a request's "context"). Encoded once, copied after.
                    seq[row, j] = seq[row - 1, j]
                    continue
                previous = value
                tokens = self._tokens(f, value, row, max_sequence_items)
                if tokens:
                    seq[row, j, self.seq_len - len(tokens):] = [ids.get(t, OOV_ID) for t in tokens]
        return sparse, dense, seq
