"""The one embedding layer every model uses.

Tables are split from features (as in TorchRec): each schema field draws ids from a vocabulary table,
and fields that name the same table share its rows. A layer holds one or more *named table sets*
(e.g. "default" for the model's embeddings and "linear" for first-order weights, or DARE's
"attention" and "representation"); within a set, all tables of the same width are fused into one
parameter with per-table row offsets, so looking up every sparse field is a single gather.

Per-field widths (DNIS) are an option of the same layer: fields are grouped by width, each group is one
fused table, and `flat()` puts the groups' outputs back into schema order with one index_select.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from recsys.batch import Batch
from recsys.features.schema import FieldSpec, Schema

DimSpec = int | Mapping[str, int]
POOLINGS = ("mean", "sum")


@dataclass(frozen=True)
class _Group:
    """Fields of one table set that share one embedding width, hence one fused parameter."""

    key: str
    dim: int
    sparse_fields: tuple[str, ...]
    dense_fields: tuple[str, ...]
    seq_fields: tuple[str, ...]


def _field_dim(spec: DimSpec, f: FieldSpec, use_schema_dims: bool) -> int | None:
    """The field's width in one table set; None when a named (non-default) set leaves the field out."""
    if isinstance(spec, Mapping):
        if f.name in spec:
            return int(spec[f.name])
        if "*" not in spec:
            if not use_schema_dims:
                return None
            raise ValueError(f"no embedding dim for field {f.name!r}: give it or a '*' default")
        return int(spec["*"])
    if use_schema_dims and f.dim:
        return int(f.dim)
    return int(spec)


class FeatureEmbedding(nn.Module):
    """Embeds a Batch's sparse, dense and sequence fields.

    Args:
        schema: the fitted schema.
        dim: width of the "default" table set: one int, or {field: dim, "*": default}. A field's own
            `dim` in the schema overrides an int default.
        tables: named table sets {name: dim spec}; defaults to {"default": dim}. A named set other than
            "default" given as {field: dim} without a "*" default holds only those fields (DARE's
            attention embeddings exist for the target and its history only).
        fields: only these fields (schema order is kept); default all feature fields.
        seq_pooling: how `forward` pools a sequence field ("mean" or "sum" over non-padding items).
        init_std: embeddings start as N(0, init_std^2); padding rows are zero.

    Padding rows (id 0 of every vocabulary table) stay zero through training: a hook zeroes their
    gradient once it is accumulated. Masking alone does not keep them neutral: a sequence model's batch
    statistics (Dice's batch norm over every history position, padding included) send gradient into the
    row a history's padding looks up, and Adam turns even a tiny gradient into a step of about the
    learning rate. Zeroing a few rows of the accumulated gradient costs O(rows x dim) per step, where
    masking the lookups would cost a pass over every [B, L, D] lookup.
    """

    def __init__(
        self,
        schema: Schema,
        dim: DimSpec = 10,
        *,
        tables: Mapping[str, DimSpec] | None = None,
        fields: Sequence[str] | None = None,
        seq_pooling: str = "mean",
        init_std: float = 1e-4,
    ):
        super().__init__()
        if seq_pooling not in POOLINGS:
            raise ValueError(f"seq_pooling must be one of {POOLINGS}, got {seq_pooling!r}")
        self.seq_pooling = seq_pooling
        self.table_specs = dict(tables) if tables else {"default": dim}
        wanted = set(fields) if fields is not None else None
        if wanted is not None:
            unknown = wanted - {f.name for f in schema.feature_fields}
            if unknown:
                raise ValueError(f"unknown feature fields {sorted(unknown)}; the schema has {[f.name for f in schema.feature_fields]}")
        selected = [f for f in schema.feature_fields if wanted is None or f.name in wanted]
        if not selected:
            raise ValueError("an embedding layer needs at least one field")
        self.field_names = [f.name for f in selected]
        sizes = schema.table_sizes()
        sparse_pos = {f.name: i for i, f in enumerate(schema.sparse)}
        dense_pos = {f.name: i for i, f in enumerate(schema.dense)}
        seq_pos = {f.name: i for i, f in enumerate(schema.sequence)}

        self.weights = nn.ParameterDict()
        self.table_rows: dict[str, dict[str, tuple[int, int]]] = {}  # group -> vocab table -> (first row, rows)
        self.groups: dict[str, list[_Group]] = {}
        self.field_dims: dict[str, dict[str, int]] = {}
        for table_set, spec in self.table_specs.items():
            widths = {f.name: _field_dim(spec, f, table_set == "default") for f in selected}
            dims = {name: width for name, width in widths.items() if width is not None}
            if not dims:
                raise ValueError(f"table set {table_set!r} names none of the fields {self.field_names}")
            self.field_dims[table_set] = dims
            groups = []
            for width in sorted(set(dims.values())):
                members = [f for f in selected if dims.get(f.name) == width]
                group = _Group(
                    key=f"{table_set}__{width}",
                    dim=width,
                    sparse_fields=tuple(f.name for f in members if f.is_sparse),
                    dense_fields=tuple(f.name for f in members if f.is_dense),
                    seq_fields=tuple(f.name for f in members if f.kind == "sequence"),
                )
                # Row offsets: one block of rows per vocabulary table, shared by the fields naming it.
                offsets: dict[str, int] = {}
                pad_rows = []
                for f in members:
                    if f.is_dense:
                        continue
                    if f.vocab_key not in offsets:
                        offsets[f.vocab_key] = sum(sizes[k] for k in offsets)
                        pad_rows.append(offsets[f.vocab_key])
                n_rows = sum(sizes[k] for k in offsets)
                self.table_rows[group.key] = {k: (offsets[k], sizes[k]) for k in offsets}
                by_name = {f.name: f for f in members}
                self._buffer(group, "sparse_cols", [sparse_pos[n] for n in group.sparse_fields])
                self._buffer(group, "sparse_offsets", [offsets[by_name[n].vocab_key] for n in group.sparse_fields])
                self._buffer(group, "dense_cols", [dense_pos[n] for n in group.dense_fields])
                self._buffer(group, "seq_cols", [seq_pos[n] for n in group.seq_fields])
                self._buffer(group, "seq_offsets", [offsets[by_name[n].vocab_key] for n in group.seq_fields])
                if n_rows:
                    table = torch.randn(n_rows, width) * init_std
                    table[pad_rows] = 0.0
                    self.weights[group.key] = nn.Parameter(table)
                    self._buffer(group, "pad_rows", pad_rows)
                if group.dense_fields:
                    self.weights[group.key + "__dense"] = nn.Parameter(torch.randn(len(group.dense_fields), width) * init_std)
                groups.append(group)
            self.groups[table_set] = groups
            # Where each group's flattened output lands in schema order.
            order, start = [], {}
            cursor = 0
            for g in groups:
                for n in g.sparse_fields + g.dense_fields + g.seq_fields:
                    start[n] = cursor
                    cursor += g.dim
            for n in self.field_names:
                if n in dims:
                    order.extend(range(start[n], start[n] + dims[n]))
            self.register_buffer(f"{table_set}__flat_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.hold_padding_rows()

    def hold_padding_rows(self, force: bool = False) -> None:
        """Register, on every fused table that has no such hook yet, the hook that zeroes its padding rows'
        gradient. Idempotent; called at construction, after unpickling or a deep copy (which make new
        Parameters without hooks: `force`, since pickling keeps a Parameter's attributes but not its hooks)
        and on each training forward (in case a table was replaced, e.g. by `load_state_dict(assign=True)`)."""
        owner = weakref.ref(self)  # no reference cycle module -> parameter -> hook -> module
        for key, param in self.weights.items():
            if key.endswith("__dense") or (getattr(param, "_holds_padding_rows", False) and not force):
                continue

            def zero_padding_grad(p: torch.Tensor, key: str = key) -> None:
                module = owner()
                if module is not None and p.grad is not None:
                    p.grad.index_fill_(0, getattr(module, f"{key}__pad_rows"), 0.0)

            param.register_post_accumulate_grad_hook(zero_padding_grad)
            param._holds_padding_rows = True

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.hold_padding_rows(force=True)

    def _buffer(self, group: _Group, name: str, values: list[int]) -> None:
        self.register_buffer(f"{group.key}__{name}", torch.tensor(values, dtype=torch.long), persistent=False)

    def _get(self, group: _Group, name: str) -> torch.Tensor:
        return getattr(self, f"{group.key}__{name}")

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def dim(self, table: str = "default") -> int:
        """The common width of a table set; an error if its fields have several widths."""
        widths = {g.dim for g in self.groups[table]}
        if len(widths) != 1:
            raise ValueError(f"table set {table!r} has per-field widths {sorted(widths)}: use flat()")
        return widths.pop()

    def output_dim(self, table: str = "default") -> int:
        """Width of `flat()`: the sum of the field widths."""
        return sum(self.field_dims[table].values())

    # ------------------------------------------------------------------ lookups
    def _group_fields(self, batch: Batch, group: _Group, pooled_sequences: bool = True) -> torch.Tensor:
        """[B, fields of the group, dim]: sparse, then dense, then pooled sequence fields (unless
        `pooled_sequences` is False, for models that attend over the sequences instead)."""
        parts = []
        if group.sparse_fields:
            ids = batch.sparse.index_select(1, self._get(group, "sparse_cols")) + self._get(group, "sparse_offsets")
            parts.append(nn.functional.embedding(ids, self.weights[group.key]))
        if group.dense_fields:
            values = batch.dense.index_select(1, self._get(group, "dense_cols"))
            parts.append(values.unsqueeze(-1) * self.weights[group.key + "__dense"])
        if group.seq_fields and pooled_sequences:
            emb, mask = self._group_sequences(batch, group)
            pooled = (emb * mask.unsqueeze(-1)).sum(dim=2)
            if self.seq_pooling == "mean":
                pooled = pooled / mask.sum(dim=2, keepdim=True).clamp(min=1.0)
            parts.append(pooled)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _group_sequences(self, batch: Batch, group: _Group, fields: torch.Tensor | None = None,
                         by_position: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch.seq.index_select(1, self._get(group, "seq_cols"))  # [B, S, L]
        offsets = self._get(group, "seq_offsets")
        # Fields are picked and reordered on the ids, not on the [.., D] embeddings, so the lookup is the
        # only pass that writes the large float tensor.
        if fields is not None:
            ids, offsets = ids.index_select(1, fields), offsets.index_select(0, fields)
        mask = ids != 0
        shifted = ids + offsets.view(1, -1, 1)
        if by_position:
            shifted, mask = shifted.transpose(1, 2), mask.transpose(1, 2)
        return nn.functional.embedding(shifted, self.weights[group.key]), mask.to(self.weights[group.key].dtype)

    def forward(self, batch: Batch, table: str = "default", *, pooled_sequences: bool = True) -> torch.Tensor:
        """Field embeddings [B, F, D] of a table set whose fields share one width D. With
        `pooled_sequences=False` the sequence fields are left out: [B, sparse + dense fields, D]."""
        groups = self.groups[table]
        if len(groups) != 1:
            raise ValueError(f"table set {table!r} has several widths: use flat()")
        if self.training:
            self.hold_padding_rows()
        return self._group_fields(batch, groups[0], pooled_sequences)

    def flat(self, batch: Batch, table: str = "default") -> torch.Tensor:
        """All field embeddings concatenated in schema order, [B, sum of widths]."""
        groups = self.groups[table]
        if self.training:
            self.hold_padding_rows()
        if len(groups) == 1:
            return self._group_fields(batch, groups[0]).flatten(1)
        joined = torch.cat([self._group_fields(batch, g).flatten(1) for g in groups], dim=1)
        return joined.index_select(1, getattr(self, f"{table}__flat_order"))

    def sequences(self, batch: Batch, table: str = "default", fields: torch.Tensor | None = None,
                  by_position: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpooled sequence embeddings [B, S, L, D] and their mask [B, S, L] (1 for items, 0 padding).
        `fields` picks and orders the table set's sequence fields (indices among them); `by_position`
        gives [B, L, S, D] and [B, L, S] instead, each position's fields side by side."""
        groups = [g for g in self.groups[table] if g.seq_fields]
        if len(groups) != 1:
            raise ValueError(f"sequence fields of table set {table!r} must share one width")
        return self._group_sequences(batch, groups[0], fields, by_position)

    # ------------------------------------------------------------------ regularisation
    def set_row_counts(self, counts: Mapping[str, torch.Tensor]) -> None:
        """Training-data occurrence counts per vocabulary table (index = id), for scope="mba". Kept as
        non-persistent buffers: they come from the feature artifacts, not the checkpoint."""
        for groups in self.groups.values():
            for g in groups:
                if g.key not in self.weights:
                    continue
                inverse = torch.ones(self.weights[g.key].shape[0])
                for table, (start, size) in self.table_rows[g.key].items():
                    if table in counts:
                        n = torch.as_tensor(counts[table], dtype=torch.float32)[:size]
                        inverse[start : start + len(n)] = 1.0 / n.clamp(min=1.0)
                self.register_buffer(f"{g.key}__inverse_count", inverse.to(self.weights[g.key].device), persistent=False)

    def l2_penalty(self, batch: Batch, scope: str = "batch_rows") -> torch.Tensor:
        """1/2 the squared L2 norm of the embedding rows, plus the dense field vectors.

        scope="batch_rows": only the rows this batch looks up, each once (cost grows with the batch,
        not the tables). scope="table": every row of every table, each batch, which is what FuxiCTR
        and therefore the published BARS results do. scope="mba": DIN's mini-batch-aware
        regularisation, the batch's rows each weighted by 1 / (its count in the training data), so
        frequent ids are not over-penalised (needs `set_row_counts`; the CTR task calls it)."""
        if scope not in ("batch_rows", "table", "mba"):
            raise ValueError(f"scope must be 'batch_rows', 'table' or 'mba', got {scope!r}")
        total = torch.zeros((), device=batch.sparse.device)
        for groups in self.groups.values():
            for g in groups:
                if g.key in self.weights and scope == "table":
                    total = total + self.weights[g.key].pow(2).sum()
                elif g.key in self.weights:
                    ids = []
                    if g.sparse_fields:
                        ids.append((batch.sparse.index_select(1, self._get(g, "sparse_cols")) + self._get(g, "sparse_offsets")).flatten())
                    if g.seq_fields:
                        seq = batch.seq.index_select(1, self._get(g, "seq_cols")) + self._get(g, "seq_offsets").view(1, -1, 1)
                        ids.append(seq.flatten())
                    rows = torch.unique(torch.cat(ids))
                    squares = self.weights[g.key].index_select(0, rows).pow(2).sum(dim=1)
                    if scope == "mba":
                        inverse = getattr(self, f"{g.key}__inverse_count", None)
                        if inverse is None:
                            raise RuntimeError("embedding_l2_scope 'mba' needs the training row counts: call set_row_counts")
                        squares = squares * inverse.index_select(0, rows)
                    total = total + squares.sum()
                if g.key + "__dense" in self.weights:
                    total = total + self.weights[g.key + "__dense"].pow(2).sum()
        return 0.5 * total
