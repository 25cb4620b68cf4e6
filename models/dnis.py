"""DNIS (Cheng et al., "Differentiable Neural Input Search for Recommender Systems"): how many embedding
dimensions each frequency block of features needs, on top of any zoo CTR model (`base`).

- Blocks: every feature (a vocabulary id) of the searched table set is ranked by its training count
  over all tables together, and the ranking is cut into `blocks` (fractions, most frequent first), as the
  official code does. The pipeline numbers each vocabulary by descending count, so a block is a
  contiguous id range in every table; padding and out-of-vocabulary rows go with their table's most
  frequent block.
- Search space (`architecture=None`): a weight in [0, 1] per (block, dimension), initially 1, multiplies
  every looked-up embedding (FeatureEmbedding.gate_dims). The search task warm-starts the model with the
  weights at 1, then steps the embeddings on training batches and the weights on validation batches
  with an L1 term, the official per-block gradient normalisation (each block's gradient row divided by
  its mean absolute value over the dimensions) and a clip to [0, 1] after every step.
- Derived architecture: for each (table, block) row range and dimension, the mean |weight x embedding|
  over the range's rows; the highest-scoring (range, dimension) units are kept until the budget of
  stored entries is met, exactly: the unit that crosses it is kept for the first (most frequent) rows
  of its range only, which splits the range.
- Retrain (`architecture=PATH`): the base model from scratch with the set stored packed
  (FeatureEmbedding.keep_dims): only the kept entries are parameters, so the export really shrinks,
  and lookups return the set's full width with zeros at the dropped dimensions, so the base model's
  shapes (an FM's equal widths, its MLP input) stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.search import ArchitectureError, Searchable, load_architecture

KIND = "dnis"
DEFAULT_BLOCKS = (0.1, 0.2, 0.2, 0.2, 0.3)  # the official CF setting


class DNIS(Searchable, nn.Module):
    """Args:
        schema: the fitted schema.
        base: the zoo model underneath (a registered name, e.g. "deepfm"); it must keep its shared
            embedding layer as `embedding`.
        base_params: the base model's hyper-parameters (its own defaults where not given).
        architecture: None (the search space) or an architecture file / dict written by a search.
        table_set: the base's embedding table set searched and pruned ("default": the model's embeddings;
            first-order weights in other sets are left whole).
        blocks: fractions of all features, most frequent first, that form the frequency blocks.
        keep_fraction: the budget, as a fraction of the set's stored entries (used when `budget` is None).
        budget: the budget as a number of stored embedding entries.
        l1: weight of the L1 term on the gate weights.
        search_weights: "embeddings" (the official code: only the embedding layer trains during the search,
            the MLP stays as the warm start left it) or "all".
    """

    def __init__(
        self,
        schema: Schema,
        base: str = "deepfm",
        base_params: Mapping[str, Any] | None = None,
        architecture: str | Mapping[str, Any] | None = None,
        table_set: str = "default",
        blocks: Sequence[float] = DEFAULT_BLOCKS,
        keep_fraction: float = 0.5,
        budget: int | None = None,
        l1: float = 1e-5,
        search_weights: str = "embeddings",
    ):
        super().__init__()
        from recsys.models import model_class

        if base == "dnis":
            raise ValueError("DNIS needs another zoo model as its base, not itself")
        if search_weights not in ("embeddings", "all"):
            raise ValueError(f"search_weights must be 'embeddings' or 'all', got {search_weights!r}")
        fractions = [float(b) for b in blocks]
        if not fractions or any(b <= 0 for b in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"blocks must be positive fractions that sum to 1, got {list(blocks)}")
        self.base_name, self.table_set, self.blocks = base, table_set, fractions
        self.keep_fraction, self.budget, self.l1, self.search_weights = keep_fraction, budget, l1, search_weights
        self.base = model_class(base)(schema, **dict(base_params or {}))
        if not isinstance(getattr(self.base, "embedding", None), FeatureEmbedding):
            raise ValueError(f"DNIS needs a base model whose shared embedding layer is its `embedding`; {base} has none")
        self.group_key = self.embedding.table_group(table_set).key
        self.width = self.embedding.groups[table_set][0].dim
        self.searching = architecture is None
        if self.searching:
            rows = self.embedding.group_rows(self.group_key)
            self.embedding.gate_dims(table_set, torch.zeros(rows, dtype=torch.long), len(fractions))
            # Blocks come from training counts (set_row_counts, which the search task calls at setup).
            self.register_buffer("blocks_assigned", torch.zeros((), dtype=torch.bool))
        else:
            self.architecture = self._load(architecture)
            self.embedding.keep_dims(table_set, {t: [(r["rows"][0], r["rows"][1], r["dims"]) for r in ranges]
                                                 for t, ranges in self.architecture["tables"].items()})

    @property
    def embedding(self) -> FeatureEmbedding:
        # A property, not an attribute: registering the base's layer twice would duplicate its state.
        return self.base.embedding

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.base(batch)

    # ------------------------------------------------------------------ the architecture
    def _load(self, architecture: str | Mapping[str, Any]) -> dict[str, Any]:
        arch = load_architecture(architecture, KIND)
        where = f"architecture file {architecture}" if isinstance(architecture, str) else "the architecture"
        for key, mine in (("base", self.base_name), ("table_set", self.table_set), ("embedding_dim", self.width)):
            if arch.get(key) != mine:
                raise ArchitectureError(f"{where} was searched with {key}={arch.get(key)!r}, but this model has {key}={mine!r}")
        tables = arch.get("tables")
        if not isinstance(tables, Mapping):
            raise ArchitectureError(f"{where} has no 'tables' object (table -> [{{rows, dims}}, ...])")
        for table, ranges in tables.items():
            for r in ranges:
                if not isinstance(r, Mapping) or "rows" not in r or "dims" not in r:
                    raise ArchitectureError(f"{where}: table {table!r} has an entry {r!r} without 'rows' and 'dims'")
        return arch

    def gates(self) -> nn.Parameter:
        return self.embedding.dim_gates[self.group_key]

    def row_blocks(self) -> torch.Tensor:
        return getattr(self.embedding, f"{self.group_key}__row_block")

    def frequency_blocks(self, counts: Mapping[str, Any]) -> torch.Tensor:
        """Block of each fused row of the searched set, from training counts (see the module docstring)."""
        tables = self.embedding.table_rows[self.group_key]
        names, ids, values = [], [], []
        for index, (table, (_, size)) in enumerate(tables.items()):
            if table not in counts or size <= 2:
                continue
            n = np.asarray(counts[table], dtype=np.int64)[2:size]
            names.append(np.full(len(n), index))
            ids.append(np.arange(2, 2 + len(n)))
            values.append(n)
        row_block = torch.zeros(self.embedding.group_rows(self.group_key), dtype=torch.long)
        if not values:
            return row_block
        table_index, id_, count = np.concatenate(names), np.concatenate(ids), np.concatenate(values)
        order = np.lexsort((id_, table_index, -count))  # most frequent first; ties in table, then id order
        bounds = np.round(np.cumsum(self.blocks)[:-1] * len(order)).astype(np.int64)
        block = np.empty(len(order), dtype=np.int64)
        block[order] = np.searchsorted(bounds, np.arange(len(order)), side="right")
        offsets = np.array([offset for offset, _ in tables.values()])
        row_block[torch.from_numpy(offsets[table_index] + id_)] = torch.from_numpy(block)
        for table, (offset, size) in tables.items():
            rows = row_block[offset : offset + size]
            rows[:2] = rows[2] if size > 2 else 0  # padding and out-of-vocabulary join the most frequent block
            if bool((rows[1:] < rows[:-1]).any()):
                raise ArchitectureError(f"vocabulary {table!r} is not numbered by descending training count, so its "
                                        "frequency blocks are not contiguous id ranges")
        return row_block

    def set_row_counts(self, counts: Mapping[str, Any]) -> None:
        if not self.searching:
            return
        self.embedding.set_row_blocks(self.table_set, self.frequency_blocks(counts))
        self.blocks_assigned.fill_(True)

    def _ranges(self) -> dict[str, list[tuple[int, int, int]]]:
        """Per table, its (first id, end id, block) runs."""
        row_block = self.row_blocks().cpu()
        out = {}
        for table, (offset, size) in self.embedding.table_rows[self.group_key].items():
            blocks = row_block[offset : offset + size].tolist()
            runs, start = [], 0
            for i in range(1, size + 1):
                if i == size or blocks[i] != blocks[start]:
                    runs.append((start, i, blocks[start]))
                    start = i
            out[table] = runs
        return out

    def dense_entries(self) -> int:
        return self.embedding.group_rows(self.group_key) * self.width

    def budget_entries(self) -> int:
        dense = self.dense_entries()
        budget = int(self.budget) if self.budget is not None else int(round(self.keep_fraction * dense))
        if not 1 <= budget <= dense:
            raise ArchitectureError(f"the DNIS budget is {budget} stored entries; it must be in [1, {dense}] "
                                    f"(the set's {self.embedding.group_rows(self.group_key)} rows x {self.width} dims)")
        return budget

    def derive_architecture(self) -> dict[str, Any]:
        self.require_search_space()
        if not bool(self.blocks_assigned):
            raise ArchitectureError("DNIS has no frequency blocks yet: set_row_counts(training counts) assigns them "
                                    "(the search task does it at setup)")
        budget = self.budget_entries()
        table = self.embedding.weights[self.group_key].detach().cpu()
        gates = self.gates().detach().cpu()
        tables = self.embedding.table_rows[self.group_key]
        ranges = self._ranges()
        units = []  # (score, table, range index, dim, rows)
        for name, runs in ranges.items():
            offset = tables[name][0]
            for r, (start, stop, block) in enumerate(runs):
                score = (gates[block] * table[offset + start : offset + stop]).abs().mean(dim=0)
                units += [(float(score[d]), name, r, d, stop - start) for d in range(self.width)]
        units.sort(key=lambda u: -u[0])  # a stable sort: ties keep table, range and dim order
        kept: dict[tuple[str, int], list[int]] = {}
        split: tuple[str, int, int, int] | None = None  # (table, range, dim, rows kept)
        total = 0
        for _, name, r, d, rows in units:
            if total + rows <= budget:
                kept.setdefault((name, r), []).append(d)
                total += rows
            else:
                split = (name, r, d, budget - total)
                total = budget
            if total == budget:
                break
        out: dict[str, list[dict[str, Any]]] = {}
        for name, runs in ranges.items():
            out[name] = []
            for r, (start, stop, block) in enumerate(runs):
                dims = sorted(kept.get((name, r), []))
                if split is not None and split[:2] == (name, r):
                    cut = start + split[3]
                    out[name].append({"rows": [start, cut], "block": block, "dims": sorted([*dims, split[2]])})
                    start = cut
                out[name].append({"rows": [start, stop], "block": block, "dims": dims})
        arch = {
            "kind": KIND,
            "base": self.base_name,
            "table_set": self.table_set,
            "embedding_dim": self.width,
            "blocks": self.blocks,
            "budget": budget,
            "dense_entries": self.dense_entries(),
            "gates": [[round(float(v), 4) for v in row] for row in gates],
            "tables": out,
        }
        return {**arch, **self.summarise(arch)}

    @staticmethod
    def summarise(arch: Mapping[str, Any]) -> dict[str, Any]:
        """Stored entries, the reduction, and the mean kept dimensions per frequency block and per vocabulary
        table (weighted by rows). The per-table view shows what a block view hides: a small table read by
        every impression (a context field) can lose all of its dimensions."""
        kept = rows_total = 0
        per_block: dict[int, list[int]] = {}
        per_table: dict[str, list[int]] = {}
        for table, ranges in arch["tables"].items():
            for r in ranges:
                rows = r["rows"][1] - r["rows"][0]
                kept += rows * len(r["dims"])
                rows_total += rows
                for totals in (per_block.setdefault(int(r.get("block", 0)), [0, 0]), per_table.setdefault(table, [0, 0])):
                    totals[0] += rows * len(r["dims"])
                    totals[1] += rows
        return {
            "kept_entries": kept,
            "reduction": round(arch["dense_entries"] / kept, 4) if kept else None,
            "mean_dims_per_block": {str(b): round(t[0] / t[1], 3) for b, t in sorted(per_block.items())},
            "mean_dims_per_table": {t: round(v[0] / v[1], 3) if v[1] else 0.0 for t, v in per_table.items()},
            "mean_dims": round(kept / rows_total, 3) if rows_total else 0.0,
        }

    def architecture_summary(self) -> dict[str, Any]:
        if self.searching:
            return {}
        return {"base": self.base_name, "dense_entries": self.architecture["dense_entries"], **self.summarise(self.architecture)}

    # ------------------------------------------------------------------ search hooks
    def architecture_parameters(self) -> list[nn.Parameter]:
        self.require_search_space()
        return [self.gates()]

    def searched_weights(self) -> list[nn.Parameter] | None:
        if self.search_weights == "all":
            return None
        gates = self.gates()
        return [p for p in self.embedding.parameters() if p is not gates]

    def architecture_penalty(self) -> torch.Tensor:
        return self.l1 * self.gates().abs().sum()

    def before_architecture_step(self) -> None:
        gates = self.gates()
        if gates.grad is not None:
            # Each block's row of the gradient over its mean absolute value (the official alpha_grad_norm), so
            # a rare block moves as fast as a frequent one.
            gates.grad = gates.grad / (gates.grad.abs().mean(dim=1, keepdim=True) + 1e-8)

    def after_architecture_step(self) -> None:
        with torch.no_grad():
            self.gates().clamp_(0.0, 1.0)
