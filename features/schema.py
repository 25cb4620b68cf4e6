"""The schema: what each raw column becomes, saved as JSON next to the vocabularies (Parquet).

The schema is the one place that says which tensor column means what: the data module, every model's
embedding layer and the serving endpoint read it, never their own copy of the field list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from recsys.features.errors import FeatureError

# label: a CTR click (0/1); group: what gAUC groups by; target: the next item a next-item task predicts, an id
# of the vocabulary of the sequence it names in `share_vocab_with`. None of the three is a model input.
KINDS = ("categorical", "numeric", "sequence", "label", "group", "target")
# What a field stands for, where a default needs to know it: FinalMLP's feature-selection contexts and the
# target-rate baseline read the fields marked user and item, whatever they are called.
ROLES = ("user", "item")
NORMS = (None, "standard", "minmax", "log")
SCHEMA_VERSION = 1
PAD_ID = 0
OOV_ID = 1


@dataclass
class FieldSpec:
    """One field: how to read it from its raw column (config) and what fitting found (stats)."""

    name: str
    kind: str
    source: str | None = None  # raw column; defaults to `name`
    # categorical and sequence
    min_count: int = 1
    hash_buckets: int | None = None
    table: str | None = None  # embedding table; fields naming the same table share it
    dim: int | None = None  # embedding dim for this field; None means the model's default
    # sequence
    max_len: int | None = None
    sep: str = "^"
    share_vocab_with: str | None = None
    # numeric
    fill: float | str = 0.0  # a number, "mean" or "median"
    norm: str | None = None
    buckets: int | None = None  # quantile buckets: the field becomes a categorical id
    # what the field stands for (one of ROLES), for defaults that need a user or an item field
    role: str | None = None
    # filled in by fitting
    raw_dtype: str | None = None  # "int", "float" or "str"
    vocab_size: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FeatureError(f"field {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        self.source = self.source or self.name
        if self.kind == "sequence":
            if not self.max_len or self.max_len < 1:
                raise FeatureError(f"sequence field {self.name!r} needs max_len >= 1")
            if self.hash_buckets:
                raise FeatureError(
                    f"sequence field {self.name!r}: hash the field it shares a vocabulary with instead"
                )
        if self.kind == "target" and not self.share_vocab_with:
            raise FeatureError(f"target field {self.name!r} needs share_vocab_with: the sequence whose items it predicts")
        if self.kind == "numeric" and self.norm not in NORMS:
            raise FeatureError(f"numeric field {self.name!r}: unknown norm {self.norm!r}; expected one of {NORMS}")
        if self.role is not None and self.role not in ROLES:
            raise FeatureError(f"field {self.name!r}: unknown role {self.role!r}; expected one of {ROLES}")
        if self.role is not None and self.kind != "categorical":
            raise FeatureError(f"field {self.name!r}: a role marks a categorical field, not a {self.kind} one")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise FeatureError(f"field {self.name!r}: hash_buckets must be >= 1")
        if self.table is None and self.kind in ("categorical", "sequence") and not self.share_vocab_with:
            self.table = self.name
        if self.kind == "numeric" and self.buckets and self.table is None:
            self.table = self.name

    @property
    def is_sparse(self) -> bool:
        """Gives one integer id per row (categorical, or a bucketised numeric)."""
        return self.kind == "categorical" or (self.kind == "numeric" and bool(self.buckets))

    @property
    def is_dense(self) -> bool:
        return self.kind == "numeric" and not self.buckets

    @property
    def vocab_key(self) -> str:
        """The vocabulary this field's ids come from (shared by every field that names it)."""
        return self.table or self.name

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FieldSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise FeatureError(f"field {raw.get('name')!r}: unknown setting(s) {sorted(unknown)}")
        if "name" not in raw or "kind" not in raw:
            raise FeatureError(f"a field needs at least a name and a kind, got {raw}")
        return cls(**raw)


@dataclass
class Schema:
    """The fitted fields, in the order their columns appear in each tensor group."""

    fields: list[FieldSpec]
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise FeatureError(f"duplicate field names: {sorted(dup)}")
        by_name = {f.name: f for f in self.fields}
        for f in self.fields:
            if f.share_vocab_with:
                owner = by_name.get(f.share_vocab_with)
                if owner is None:
                    raise FeatureError(f"field {f.name!r} shares the vocabulary of unknown field {f.share_vocab_with!r}")
                f.table = owner.table
        if sum(f.kind == "label" for f in self.fields) > 1:
            raise FeatureError("a schema has at most one label field")
        if sum(f.kind == "group" for f in self.fields) > 1:
            raise FeatureError("a schema has at most one group field")
        if sum(f.kind == "target" for f in self.fields) > 1:
            raise FeatureError("a schema has at most one target field")
        for role in ROLES:
            marked = [f.name for f in self.fields if f.role == role]
            if len(marked) > 1:
                raise FeatureError(f"fields {marked} all have role {role!r}; at most one field may")

    def __getitem__(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r} in the schema; fields: {[f.name for f in self.fields]}")

    @property
    def sparse(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.is_sparse]

    @property
    def dense(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.is_dense]

    @property
    def sequence(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "sequence"]

    @property
    def label(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.kind == "label"), None)

    @property
    def group(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.kind == "group"), None)

    @property
    def target(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.kind == "target"), None)

    def with_role(self, role: str) -> FieldSpec | None:
        """The field marked with `role` (one of ROLES), if any."""
        if role not in ROLES:
            raise KeyError(f"unknown role {role!r}; expected one of {ROLES}")
        return next((f for f in self.fields if f.role == role), None)

    @property
    def feature_fields(self) -> list[FieldSpec]:
        """Every field a model sees, in tensor order: sparse, then dense, then sequence."""
        return self.sparse + self.dense + self.sequence

    def table_sizes(self) -> dict[str, int]:
        """Rows per embedding table (ids 0 = padding and 1 = out-of-vocabulary included)."""
        sizes: dict[str, int] = {}
        for f in self.sparse + self.sequence:
            if f.vocab_size is None:
                raise FeatureError(f"field {f.name!r} has no vocabulary size: fit the pipeline first")
            sizes[f.vocab_key] = max(sizes.get(f.vocab_key, 0), f.vocab_size)
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "fields": [asdict(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Schema:
        if raw.get("version") != SCHEMA_VERSION:
            raise FeatureError(f"schema version {raw.get('version')} is not supported (expected {SCHEMA_VERSION})")
        return cls([FieldSpec.from_dict(f) for f in raw["fields"]], version=raw["version"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        if not path.exists():
            raise FeatureError(f"no schema at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
