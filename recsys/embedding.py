"""The one embedding layer every model uses.

Tables are split from features (as in TorchRec): each schema field draws ids from a vocabulary table,
and fields that name the same table share its rows. A layer holds one or more *named table sets*
(e.g. "default" for the model's embeddings and "linear" for first-order weights, or DARE's
"attention" and "representation"); within a set, all tables of the same width are fused into one
parameter with per-table row offsets, so looking up every sparse field is a single gather.

Per-field widths are an option of the same layer: fields are grouped by width, each group is one
fused table, and `flat()` puts the groups' outputs back into schema order with one index_select.

Three more options serve the search-then-retrain models (docs/search.md):
- *cross sets* (OptInter's memorised pairs): a named set whose "fields" are pairs of sparse fields; the
  layer computes each pair's cross id from the two ids (exact when the product of the two vocabularies
  fits the pair's rows, else the stable hash of `recsys.kernels.hashing`, which exports to ONNX), so
  the Batch and the feature pipeline stay as they are, and all pairs are still one gather. With a
  minimum count (`cross_min_count`, OptInter's official preprocessing keeps a cross value seen 20 times in
  training on Criteo), only the values that reach it get rows, and the rest share one row per pair:
  `count_crosses` counts them once over the training split (the task calls it at setup) and sizes the
  table to them; a persistent index from value to row carries that vocabulary into checkpoints and the
  exported ONNX graph;
- *dimension gates* (`gate_dims`, DNIS's search): one weight per (frequency block, dimension), multiplied
  into every looked-up row of a set;
- *kept dimensions* (`keep_dims`, DNIS's retrain): per (vocabulary table, contiguous row range), the
  dimensions kept. Only the kept entries are stored (one flat parameter, the row-major concatenation of
  the narrow [rows, kept dims] tables), and a lookup scatters them into the set's common width, so
  FM-style models keep equal widths while the stored (and exported) table really shrinks.
A layer without these options keeps the one-gather fast path.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recsys.batch import Batch
from recsys.features.schema import FieldSpec, Schema
from recsys.kernels.hashing import stable_hash
from recsys.kernels.lookup import lookup

DimSpec = int | Mapping[str, int]
POOLINGS = ("mean", "sum")


def _index_dtype(rows: int) -> torch.dtype:
    """The narrowest integer type for row numbers 0 .. rows - 1 (ONNX's Gather takes any element type)."""
    return torch.int16 if rows <= torch.iinfo(torch.int16).max + 1 else torch.int32


@dataclass(frozen=True)
class _Group:
    """Fields of one table set that share one embedding width, hence one fused parameter."""

    key: str
    dim: int
    sparse_fields: tuple[str, ...]
    dense_fields: tuple[str, ...]
    seq_fields: tuple[str, ...]
    # A cross set: pair names, in the order of their rows and outputs (no schema fields then).
    cross_pairs: tuple[str, ...] = ()


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
        crosses: {table set: [(field a, field b), ...]}: cross sets (see the module docstring). The set's
            width is its `tables` entry (an int). A pair named "a*b" gets V_a * V_b rows (exact ids)
            when that is at most `cross_buckets`, else `cross_buckets` hashed rows.
        cross_buckets: the most rows one pair of a cross set may have.
        cross_min_count: a cross value (a row of the pair's exact or hashed range) that occurs fewer times
            in the training split has no row of its own: it shares the pair's one "rare" row with the pair's
            other rare and unseen values. 1 gives every value a row. Above 1, `count_crosses` sizes the
            table and must run before the layer looks crosses up (until then it holds one row per pair).

    Padding rows (id 0 of every vocabulary table; a packed table's stored entries of those rows) stay zero
    through training (a cross set's rows are pairs of real ids, none of them padding): a hook zeroes their
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
        crosses: Mapping[str, Sequence[Sequence[str]]] | None = None,
        cross_buckets: int = 1 << 16,
        cross_min_count: int = 1,
    ):
        super().__init__()
        if isinstance(cross_min_count, bool) or not isinstance(cross_min_count, int) or cross_min_count < 1:
            raise ValueError(f"cross_min_count must be an integer >= 1 (a training count), got {cross_min_count!r}")
        self.cross_min_count = int(cross_min_count)
        # Whether the cross values that reach the minimum count are known (count_crosses, or a loaded state).
        self.crosses_counted = False
        if seq_pooling not in POOLINGS:
            raise ValueError(f"seq_pooling must be one of {POOLINGS}, got {seq_pooling!r}")
        self.seq_pooling = seq_pooling
        self.init_std = init_std
        self.table_specs = dict(tables) if tables else {"default": dim}
        crosses = dict(crosses or {})
        unknown_sets = set(crosses) - set(self.table_specs)
        if unknown_sets:
            raise ValueError(f"cross sets {sorted(unknown_sets)} need a width in `tables`")
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
        # DNIS options (see gate_dims and keep_dims): gate weights per group, and the groups stored packed.
        self.dim_gates = nn.ParameterDict()
        self.kept_dims: dict[str, dict[str, list[tuple[int, int, tuple[int, ...]]]]] = {}
        self._hashed_crosses: set[str] = set()
        for table_set, spec in self.table_specs.items():
            if table_set in crosses:
                self._add_cross_set(schema, table_set, spec, crosses[table_set], cross_buckets)
                continue
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
            if getattr(param, "_holds_padding_rows", False) and not force:
                continue
            if not hasattr(self, f"{key}__pad_rows"):  # dense field vectors and cross sets have no padding rows
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

    def _add_cross_set(self, schema: Schema, table_set: str, width: DimSpec, pairs: Sequence[Sequence[str]],
                       cross_buckets: int) -> None:
        """A set of pair "fields": rows per pair, one fused table, and the buffers that turn two ids into
        the pair's row (see `_cross_ids`)."""
        if isinstance(width, Mapping):
            raise ValueError(f"cross set {table_set!r} needs one int width, got {dict(width)}")
        if cross_buckets < 1:
            raise ValueError(f"cross_buckets must be >= 1, got {cross_buckets}")
        sparse = {f.name: (i, f) for i, f in enumerate(schema.sparse)}
        names, left, right, right_sizes, buckets, exact, offsets = [], [], [], [], [], [], []
        rows = 0
        for pair in pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"cross set {table_set!r}: a pair names two different fields, got {list(pair)}")
            missing = [n for n in pair if n not in sparse]
            if missing:
                raise ValueError(f"cross set {table_set!r}: {missing} are not sparse fields; they are {sorted(sparse)}")
            (i, a), (j, b) = sparse[pair[0]], sparse[pair[1]]
            product = int(a.vocab_size) * int(b.vocab_size)
            size = min(product, cross_buckets)
            names.append(f"{a.name}*{b.name}")
            left.append(i)
            right.append(j)
            right_sizes.append(int(b.vocab_size))
            buckets.append(size)
            exact.append(product <= cross_buckets)
            offsets.append(rows)
            rows += size
        if len(set(names)) != len(names):
            raise ValueError(f"cross set {table_set!r} names a pair twice: {names}")
        width = int(width)
        group = _Group(key=f"{table_set}__{width}", dim=width, sparse_fields=(), dense_fields=(), seq_fields=(),
                       cross_pairs=tuple(names))
        self.field_dims[table_set] = {n: width for n in names}
        self.table_rows[group.key] = {n: (o, b) for n, o, b in zip(names, offsets, buckets)}
        self._buffer(group, "cross_left", left)
        self._buffer(group, "cross_right", right)
        self._buffer(group, "cross_right_sizes", right_sizes)
        self._buffer(group, "cross_buckets", buckets)
        self._buffer(group, "cross_offsets", offsets)
        self.register_buffer(f"{group.key}__cross_exact", torch.tensor(exact, dtype=torch.bool), persistent=False)
        if not all(exact):
            self._hashed_crosses.add(group.key)
        if self.cross_min_count > 1:
            # Value row -> table row, set by count_crosses. Persistent: the training vocabulary travels with
            # every checkpoint and export. int32, the narrowest type DDP's buffer broadcast carries (neither
            # gloo nor NCCL has int16); an export narrows its own copy further (narrow_cross_indices).
            self.register_buffer(f"{group.key}__cross_index", torch.zeros(rows, dtype=torch.int32))
            # Until counted, one (rare) row per pair.
            self.table_rows[group.key] = {n: (i, 1) for i, n in enumerate(names)}
            self.weights[group.key] = nn.Parameter(torch.zeros(len(names), width))
        else:
            self.weights[group.key] = nn.Parameter(torch.randn(rows, width) * self.init_std)
        self.groups[table_set] = [group]
        self.register_buffer(f"{table_set}__flat_order", torch.arange(len(names) * width), persistent=False)

    def _cross_ids(self, batch: Batch, group: _Group) -> torch.Tensor:
        """[B, pairs] fused rows of the pairs' cross values: a * V_b + b where the pair's rows hold every
        combination, else its stable hash modulo the pair's rows; under a minimum count, the value's row
        in the counted table (the pair's rare row for a value that did not reach the count in training)."""
        rows = self._value_rows(batch, group)
        if self.cross_min_count == 1:  # a static fact of the layer, never of the data
            return rows
        if not self.crosses_counted:
            raise RuntimeError(f"cross_min_count={self.cross_min_count}: the rows that reach it are not known yet; "
                               "call count_crosses(training batches) first (the training task does at setup)")
        return self._get(group, "cross_index").index_select(0, rows.flatten()).view_as(rows).long()

    def _value_rows(self, batch: Batch, group: _Group) -> torch.Tensor:
        """[B, pairs] the rows of the pairs' cross values themselves (before the minimum count)."""
        a = batch.sparse.index_select(1, self._get(group, "cross_left"))
        b = batch.sparse.index_select(1, self._get(group, "cross_right"))
        cross = a * self._get(group, "cross_right_sizes") + b
        if group.key in self._hashed_crosses:  # a static fact of the layer, never of the data
            exact = self._get(group, "cross_exact")
            cross = torch.where(exact, cross, stable_hash(cross) % self._get(group, "cross_buckets"))
        return cross + self._get(group, "cross_offsets")

    def count_crosses(self, batches: Iterable[Batch]) -> dict[str, dict[str, int]]:
        """Count every cross value over `batches` (the whole training split, once) and give the values that
        reach `cross_min_count` rows of their own, each pair's block ending in its rare row. The table is
        made anew at that size (initialised as at construction): call it before an optimiser holds the
        table, as the task's setup does. Returns, per cross set, the values seen and the values kept. A no-op
        without a minimum count. A hashed pair counts per bucket (a bucket's values together)."""
        groups = self._counted_groups()
        if not groups:
            return {}
        device = self.weights[groups[0].key].device
        counts = {g.key: torch.zeros(self._get(g, "cross_index").numel(), dtype=torch.long, device=device) for g in groups}
        for batch in batches:
            batch = batch.to(device)
            for g in groups:
                counts[g.key] += torch.bincount(self._value_rows(batch, g).flatten(), minlength=counts[g.key].numel())
        summary = {}
        for g in groups:
            kept = counts[g.key] >= self.cross_min_count
            index = torch.empty(kept.numel(), dtype=torch.int32, device=device)
            first = 0
            # One pass per pair at setup (not per batch): each pair's kept values in value order, then its rare row.
            for start, size in self._value_ranges(g):
                pair_kept = kept[start:start + size]
                n = int(pair_kept.sum())
                block = torch.full((size,), first + n, dtype=torch.int32, device=device)
                block[pair_kept] = torch.arange(first, first + n, dtype=torch.int32, device=device)
                index[start:start + size] = block
                first += n + 1
            self._get(g, "cross_index").copy_(index)
            self.table_rows[g.key] = self._index_blocks(g, index)
            self.weights[g.key] = nn.Parameter(torch.randn(first, g.dim, device=device) * self.init_std)
            summary[g.key] = {"seen": int((counts[g.key] > 0).sum()), "kept": int(kept.sum())}
        self.crosses_counted = True
        return summary

    def _counted_groups(self) -> list[_Group]:
        """The cross sets' groups whose values are counted (none without a minimum count)."""
        if self.cross_min_count == 1:
            return []
        return [g for groups in self.groups.values() for g in groups if g.cross_pairs]

    def _value_ranges(self, group: _Group) -> list[tuple[int, int]]:
        """(first value row, value rows) per pair of a cross set: the static ranges the index maps from."""
        return list(zip(self._get(group, "cross_offsets").tolist(), self._get(group, "cross_buckets").tolist()))

    def _index_blocks(self, group: _Group, index: torch.Tensor) -> dict[str, tuple[int, int]]:
        """(first row, rows) per pair of a counted cross set, read from its value -> row index: a pair's values
        map into one contiguous block that ends in its rare row."""
        blocks = {}
        for name, (start, size) in zip(group.cross_pairs, self._value_ranges(group)):
            rows = index[start:start + size]
            low, high = int(rows.min()), int(rows.max())
            blocks[name] = (low, high - low + 1)
        return blocks

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A state counted under a minimum count holds a table sized by its training data: take that size
        # (before the weights' own load copies into it) and the blocks its index gives each pair.
        for g in self._counted_groups():
            index = state_dict.get(f"{prefix}{g.key}__cross_index")
            table = state_dict.get(f"{prefix}weights.{g.key}")
            if index is None or table is None:
                continue
            if table.shape != self.weights[g.key].shape:
                self.weights[g.key] = nn.Parameter(torch.empty(table.shape, dtype=table.dtype, device=self.weights[g.key].device))
            self.table_rows[g.key] = self._index_blocks(g, index)
            self.crosses_counted = True
        super()._load_from_state_dict(state_dict, prefix, *args)

    def narrow_cross_indices(self) -> None:
        """Store each counted cross index in the narrowest integer type that holds its table's row numbers
        (int16 up to 32,768 rows): an ONNX graph stores one entry per possible cross value, so this halves
        that part of an export. For a copy that is only exported or served; one that trains under DDP keeps
        int32 (see __init__)."""
        for g in self._counted_groups():
            narrow = self._get(g, "cross_index").to(_index_dtype(self.weights[g.key].shape[0]))
            setattr(self, f"{g.key}__cross_index", narrow)

    def hashed_pairs(self, table_set: str) -> list[str]:
        """The pairs of a cross set whose ids are hashed (more value combinations than their rows), in order."""
        group = self.groups[table_set][0]
        exact = self._get(group, "cross_exact").tolist()
        return [name for name, is_exact in zip(group.cross_pairs, exact) if not is_exact]

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

    def table(self, name: str, table_set: str = "default") -> torch.Tensor:
        """The rows of vocabulary table `name` in a table set: a view of its fused parameter, row i = id i
        (what next-item models score against and export as the item matrix)."""
        for group in self.groups[table_set]:
            rows = self.table_rows.get(group.key, {})
            if name in rows:
                start, size = rows[name]
                return self.weights[group.key][start : start + size]
        raise KeyError(f"no vocabulary table {name!r} in table set {table_set!r}")

    def output_dim(self, table: str = "default") -> int:
        """Width of `flat()`: the sum of the field widths."""
        return sum(self.field_dims[table].values())

    # ------------------------------------------------------------------ lookups
    def _rows(self, group: _Group, ids: torch.Tensor) -> torch.Tensor:
        """[..., dim] embeddings of fused rows `ids`: one gather (the fast path), times the dimension gates
        of the row's block when the group has them, or the packed kept entries (see `keep_dims`)."""
        if group.key in self.kept_dims:
            return self._packed_rows(group, ids)
        emb = lookup(ids, self.weights[group.key])
        if group.key in self.dim_gates:
            emb = emb * self.dim_gates[group.key][self._get(group, "row_block")[ids]]
        return emb

    def _packed_rows(self, group: _Group, ids: torch.Tensor) -> torch.Tensor:
        """Rows of a packed group. Each block (a contiguous range of fused rows with one kept-dimension
        set) stores its rows' kept entries row-major from `block_value_start`. A row's block is the number
        of block starts at or below it (one comparison against the few block starts, so no Python loop
        over blocks or rows, and no per-row index table that would cost as much as the entries saved);
        `block_position[b, d]` is where dimension d sits among block b's kept dimensions, and
        `block_mask[b, d]` zeroes the dimensions it dropped."""
        entries, block = self._packed_entries(group, ids)
        values = self.weights[group.key]
        # A dropped dimension points at the row's first entry (clamped, so a block with no kept dims reads in
        # range) and is masked to zero.
        picked = values[entries.clamp(max=values.shape[0] - 1)]
        return picked * self._get(group, "block_mask")[block]

    def _group_fields(self, batch: Batch, group: _Group, pooled_sequences: bool = True) -> torch.Tensor:
        """[B, fields of the group, dim]: sparse, then dense, then pooled sequence fields (unless
        `pooled_sequences` is False, for models that attend over the sequences instead)."""
        if group.cross_pairs:
            return self._rows(group, self._cross_ids(batch, group))
        parts = []
        if group.sparse_fields:
            ids = batch.sparse.index_select(1, self._get(group, "sparse_cols")) + self._get(group, "sparse_offsets")
            parts.append(self._rows(group, ids))
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
        emb = self._rows(group, shifted)
        return emb, mask.to(emb.dtype)

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

    # ------------------------------------------------------------------ per-block dimensions (DNIS)
    def group_rows(self, key: str) -> int:
        """Fused rows of a group (the vocabulary tables it holds, one after the other)."""
        return sum(size for _, size in self.table_rows[key].values())

    def table_group(self, table_set: str) -> _Group:
        """The one group (one width, one fused table) of a table set whose dimensions may be gated or packed."""
        groups = self.groups.get(table_set)
        if groups is None:
            raise ValueError(f"no table set {table_set!r}; the sets are {sorted(self.groups)}")
        if len(groups) != 1 or groups[0].cross_pairs or groups[0].key not in self.weights:
            raise ValueError(f"table set {table_set!r} must hold one width of vocabulary tables to gate or pack its dimensions")
        return groups[0]

    def gate_dims(self, table_set: str, row_block: torch.Tensor, num_blocks: int) -> nn.Parameter:
        """DNIS's soft selection layer on a table set: a weight per (block, dimension), initially 1, that
        multiplies every looked-up row of block `row_block[row]` (fused rows, see `table_rows`). Returns
        the weight; the row -> block map is a persistent buffer, so a checkpoint carries both. Dense
        fields' vectors are not gated."""
        group = self.table_group(table_set)
        if group.key in self.kept_dims:
            raise ValueError(f"table set {table_set!r} is packed (keep_dims): it has no dimensions left to gate")
        rows = self.group_rows(group.key)
        row_block = torch.as_tensor(row_block, dtype=torch.long)
        if row_block.shape != (rows,) or (rows and (int(row_block.min()) < 0 or int(row_block.max()) >= num_blocks)):
            raise ValueError(f"row_block must give each of the {rows} rows of {group.key!r} a block in [0, {num_blocks})")
        self.register_buffer(f"{group.key}__row_block", row_block.clone(), persistent=True)
        self.dim_gates[group.key] = nn.Parameter(torch.ones(num_blocks, group.dim))
        return self.dim_gates[group.key]

    def set_row_blocks(self, table_set: str, row_block: torch.Tensor) -> None:
        """Reassign the rows of a gated set to blocks (the gates stay as they are)."""
        group = self.table_group(table_set)
        buffer = self._get(group, "row_block")
        row_block = torch.as_tensor(row_block, dtype=torch.long)
        if row_block.shape != buffer.shape or int(row_block.max()) >= self.dim_gates[group.key].shape[0] or int(row_block.min()) < 0:
            raise ValueError(f"row_block must give each of the {buffer.shape[0]} rows a block in [0, {self.dim_gates[group.key].shape[0]})")
        buffer.copy_(row_block)

    def keep_dims(self, table_set: str, kept: Mapping[str, Sequence[Sequence[Any]]]) -> None:
        """Store a table set packed: `kept` = {vocabulary table: [(first id, end id, [kept dims]), ...]},
        ranges that cover each of the set's tables' ids [0, rows) in order, without gaps. Only the kept
        entries become parameters (freshly initialised, as the layer initialises every table; padding
        rows zero); lookups scatter them into the set's width, dropped dimensions reading 0."""
        group = self.table_group(table_set)
        if group.key in self.dim_gates or group.key in self.kept_dims:
            raise ValueError(f"table set {table_set!r} is already gated or packed")
        width = group.dim
        tables = self.table_rows[group.key]
        unknown = set(kept) - set(tables)
        missing = set(tables) - set(kept)
        if unknown or missing:
            raise ValueError(f"kept dims of table set {table_set!r}: tables {sorted(missing)} are missing and "
                             f"{sorted(unknown)} are not in the set (it holds {sorted(tables)})")
        blocks: list[tuple[int, int, tuple[int, ...]]] = []  # fused rows
        normalised: dict[str, list[tuple[int, int, tuple[int, ...]]]] = {}
        for table, (offset, size) in tables.items():
            cursor = 0
            normalised[table] = []
            for entry in kept[table]:
                start, stop, dims = int(entry[0]), int(entry[1]), tuple(sorted(int(d) for d in entry[2]))
                if start != cursor or stop <= start:
                    raise ValueError(f"kept dims of table {table!r}: the range [{start}, {stop}) does not continue from "
                                     f"row {cursor}; ranges must cover rows 0..{size} in order without gaps")
                if len(set(dims)) != len(dims) or any(d < 0 or d >= width for d in dims):
                    raise ValueError(f"kept dims of table {table!r}, rows [{start}, {stop}): dims {list(dims)} must be "
                                     f"distinct and in [0, {width})")
                blocks.append((offset + start, offset + stop, dims))
                normalised[table].append((start, stop, dims))
                cursor = stop
            if cursor != size:
                raise ValueError(f"kept dims of table {table!r} cover rows 0..{cursor}, but the table has {size} rows")
        blocks.sort()
        starts, value_starts, widths, positions, masks = [], [], [], [], []
        total = 0
        for start, stop, dims in blocks:
            position = [0] * width
            mask = [0.0] * width
            for k, d in enumerate(dims):
                position[d], mask[d] = k, 1.0
            starts.append(start)
            value_starts.append(total)
            widths.append(len(dims))
            positions.append(position)
            masks.append(mask)
            total += (stop - start) * len(dims)
        self.kept_dims[group.key] = normalised
        self._buffer(group, "block_start", starts)
        self._buffer(group, "block_value_start", value_starts)
        self._buffer(group, "block_width", widths)
        self.register_buffer(f"{group.key}__block_position", torch.tensor(positions, dtype=torch.long), persistent=False)
        self.register_buffer(f"{group.key}__block_mask", torch.tensor(masks), persistent=False)
        if total == 0:
            raise ValueError(f"kept dims of table set {table_set!r} keep no entry at all")
        values = torch.randn(total) * self.init_std
        pads = torch.tensor([offset for offset, _ in tables.values()], dtype=torch.long)
        pad_entries, pad_blocks = self._packed_entries(group, pads)
        pad_values = pad_entries[self._get(group, "block_mask")[pad_blocks].bool()]
        values[pad_values] = 0.0  # padding rows start at zero
        self.weights[group.key] = nn.Parameter(values)
        # The padding hook (hold_padding_rows) now zeroes these stored entries, not rows of a [rows, dim] table.
        self.register_buffer(f"{group.key}__pad_rows", pad_values.flatten(), persistent=False)
        self.hold_padding_rows()

    def _packed_entries(self, group: _Group, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., dim] positions in the packed values of rows `ids` (for each dimension), and the rows'
        blocks."""
        starts = self._get(group, "block_start")
        block = (ids.unsqueeze(-1) >= starts).sum(dim=-1) - 1
        first = self._get(group, "block_value_start")[block] + (ids - starts[block]) * self._get(group, "block_width")[block]
        return first.unsqueeze(-1) + self._get(group, "block_position")[block], block

    def stored_entries(self, table_set: str) -> int:
        """Embedding entries a table set stores (its parameters, dense field vectors included)."""
        return sum(self.weights[k].numel() for g in self.groups[table_set] for k in (g.key, g.key + "__dense")
                   if k in self.weights)

    # ------------------------------------------------------------------ regularisation
    def set_row_counts(self, counts: Mapping[str, torch.Tensor]) -> None:
        """Training-data occurrence counts per vocabulary table (index = id), for scope="mba". Kept as
        non-persistent buffers: they come from the feature artifacts, not the checkpoint."""
        for groups in self.groups.values():
            for g in groups:
                if g.key not in self.weights:
                    continue
                inverse = torch.ones(self.group_rows(g.key))
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
                    if g.cross_pairs:
                        ids.append(self._cross_ids(batch, g).flatten())
                    if g.sparse_fields:
                        ids.append((batch.sparse.index_select(1, self._get(g, "sparse_cols")) + self._get(g, "sparse_offsets")).flatten())
                    if g.seq_fields:
                        seq = batch.seq.index_select(1, self._get(g, "seq_cols")) + self._get(g, "seq_offsets").view(1, -1, 1)
                        ids.append(seq.flatten())
                    rows = torch.unique(torch.cat(ids))
                    # The stored entries of the rows (a packed group's dropped dimensions store nothing).
                    stored = self._packed_rows(g, rows) if g.key in self.kept_dims else self.weights[g.key].index_select(0, rows)
                    squares = stored.pow(2).sum(dim=1)
                    if scope == "mba":
                        inverse = getattr(self, f"{g.key}__inverse_count", None)
                        if inverse is None:
                            raise RuntimeError("embedding_l2_scope 'mba' needs the training row counts: call set_row_counts")
                        squares = squares * inverse.index_select(0, rows)
                    total = total + squares.sum()
                if g.key + "__dense" in self.weights:
                    total = total + self.weights[g.key + "__dense"].pow(2).sum()
        return 0.5 * total
