"""OptInter (Lyu et al., ICDE 2022, "Memorize, Factorize, or be Naive"): for every pair of categorical
fields, one of three ways to model the pair, found by a search and then retrained from scratch.

- memorise: an embedding of the pair's cross value. The cross id is computed in the model from the two
  field ids (exact below `cross_buckets` combinations, hashed above) and looked up in the "cross" set of
  the shared embedding layer, so the data pipeline and the Batch are those of every other model. With
  `cross_min_count`, values seen fewer times in training share one row per pair, as the official
  preprocessing's minimum count on cross values does;
- factorise: the element-wise product of the two fields' embeddings from a separate "factor" set of
  width `pair_dim` (as the official code does: the MLP's field embeddings stay apart);
- naive: nothing.
The field embeddings and the pair outputs go into an MLP.

`architecture` says which: None builds the search space (every pair has all three candidates, mixed by
softmax(logits / temperature) per pair, the temperature annealed linearly per search step); "memorise",
"factorise" or "naive" give every pair that method (OptInter-M, OptInter-F, FNN); a path or dict gives
each pair its own (the architecture file a search wrote). A retrained model allocates nothing for naive
pairs: no rows, no factor table for fields no factorised pair uses, no MLP inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import Schema
from recsys.layers import MLP, init_linear_layers
from recsys.search import ArchitectureError, Searchable, load_architecture

METHODS = ("memorise", "factorise", "naive")
KIND = "optinter"


def pair_name(a: str, b: str) -> str:
    return f"{a}*{b}"


class OptInter(Searchable, nn.Module):
    """Args:
        schema: the fitted schema; every pair of its sparse fields is a candidate interaction.
        embedding_dim: width of the field embeddings fed to the MLP.
        pair_dim: width of a pair's output (memorised and factorised alike).
        hidden_units, activation, dropout, batch_norm: the MLP (the zoo's MLP block).
        cross_buckets: the most rows one memorised pair may have; pairs with fewer combinations get
            exact ids.
        cross_min_count: a memorised pair's value (its row) keeps its own embedding only when it occurs at
            least this often in the training split; rarer and unseen values share the pair's one rare row.
            1 keeps every value. Why: a memorised row seen a handful of times can only learn those rows'
            labels; on Frappe_x1 a minimum count of 20 (the official code's on Criteo) lifts the retrains'
            validation AUC on 3 of 3 seeds (BENCHMARKS.md, "a minimum count on memorised values").
        memorise_hashed: whether the search offers memorise to a pair with more combinations than
            `cross_buckets` rows (a hashed pair). False withholds it: such a pair's bucket mixes many values
            (MovieLens-1M's user x movie puts ~340 of its 22M combinations in each, and a user rates a movie
            once), so it can only memorise training labels; in the search those candidates made the mixed
            model overfit within two epochs and pushed user x movie to naive (BENCHMARKS.md). A hand-written
            architecture may still memorise any pair.
        architecture: None (search space), a method for every pair, or an architecture file / dict.
        temperature_start, temperature_min, temperature_decay: t = max(min, start - decay * search step).
        init_std: embeddings start as N(0, init_std^2).
    """

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 10,
        pair_dim: int = 10,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.2,
        batch_norm: bool = True,
        cross_buckets: int = 1 << 16,
        architecture: str | Mapping[str, Any] | None = None,
        temperature_start: float = 1.0,
        temperature_min: float = 0.01,
        temperature_decay: float = 5e-5,
        init_std: float = 1e-4,
        memorise_hashed: bool = True,
        cross_min_count: int = 1,
    ):
        super().__init__()
        fields = [f.name for f in schema.sparse]
        self.pairs = [(a, b) for i, a in enumerate(fields) for b in fields[i + 1:]]
        if not self.pairs:
            raise ValueError(f"OptInter needs at least two sparse fields, the schema has {fields}")
        self.pair_names = [pair_name(a, b) for a, b in self.pairs]
        self.vocab_keys = {f.name: f.vocab_key for f in schema.sparse}
        self.searching = architecture is None
        self.methods = self._resolve(architecture)  # pair name -> method (all "search" while searching)
        memorised = [p for p, n in zip(self.pairs, self.pair_names) if self.methods[n] in ("memorise", "search")]
        factorised = [p for p, n in zip(self.pairs, self.pair_names) if self.methods[n] in ("factorise", "search")]
        factor_fields = [f for f in fields if any(f in p for p in factorised)]
        tables: dict[str, Any] = {"default": embedding_dim}
        if memorised:
            tables["cross"] = pair_dim
        if factorised:
            tables["factor"] = {f: pair_dim for f in factor_fields}
        self.embedding = FeatureEmbedding(schema, tables=tables, crosses={"cross": memorised} if memorised else None,
                                          cross_buckets=cross_buckets, cross_min_count=cross_min_count, init_std=init_std)
        self.memorised = [pair_name(*p) for p in memorised]
        self.factorised = [pair_name(*p) for p in factorised]
        position = {f: i for i, f in enumerate(factor_fields)}
        self.register_buffer("factor_left", torch.tensor([position[a] for a, _ in factorised], dtype=torch.long), persistent=False)
        self.register_buffer("factor_right", torch.tensor([position[b] for _, b in factorised], dtype=torch.long), persistent=False)
        pair_outputs = len(self.pairs) if self.searching else len(memorised) + len(factorised)
        self.pair_dim = pair_dim
        self.dnn = MLP(self.embedding.output_dim() + pair_outputs * pair_dim, hidden_units, activation_name=activation,
                       dropout=dropout, batch_norm=batch_norm, output_dim=1)
        init_linear_layers(self)
        if self.searching:
            # One logit per candidate and pair, [memorise, factorise, naive]; xavier-normal as the official code.
            self.arch_logits = nn.Parameter(nn.init.xavier_normal_(torch.empty(len(self.pairs), len(METHODS))))
            # The search space memorises every pair, so its cross set knows which of them are hashed.
            self.withheld = [] if memorise_hashed else self.embedding.hashed_pairs("cross")
            # A withheld candidate's logit is held at -inf inside the softmax: weight exactly 0, no gradient.
            offered = torch.ones(len(self.pairs), len(METHODS), dtype=torch.bool)
            offered[:, 0] = torch.tensor([n not in self.withheld for n in self.pair_names])
            self.register_buffer("offered", offered, persistent=False)
            self.register_buffer("search_steps", torch.zeros((), dtype=torch.long))
            self.temperature_start, self.temperature_min = float(temperature_start), float(temperature_min)
            self.temperature_decay = float(temperature_decay)

    # ------------------------------------------------------------------ architecture
    def _resolve(self, architecture: str | Mapping[str, Any] | None) -> dict[str, str]:
        if architecture is None:
            return {n: "search" for n in self.pair_names}
        if isinstance(architecture, str) and architecture in METHODS:
            return {n: architecture for n in self.pair_names}
        arch = load_architecture(architecture, KIND)
        where = f"architecture file {architecture}" if isinstance(architecture, str) else "the architecture"
        given = arch.get("pairs")
        if not isinstance(given, Mapping):
            raise ArchitectureError(f"{where} has no 'pairs' object (pair name 'a*b' -> one of {list(METHODS)})")
        methods: dict[str, str] = {}
        for name, method in given.items():
            a, _, b = str(name).partition("*")
            canonical = name if name in self.pair_names else pair_name(b, a)
            if canonical not in self.pair_names:
                raise ArchitectureError(f"{where}: pair {name!r} is not a pair of this schema's sparse fields; "
                                        f"the pairs are {self.pair_names}")
            if canonical in methods:
                raise ArchitectureError(f"{where}: pair {name!r} is given twice")
            if method not in METHODS:
                raise ArchitectureError(f"{where}: pair {name!r} has method {method!r}; expected one of {list(METHODS)}")
            methods[canonical] = method
        missing = [n for n in self.pair_names if n not in methods]
        if missing:
            raise ArchitectureError(f"{where}: no method for the pairs {missing}")
        return methods

    def temperature(self) -> torch.Tensor:
        t = self.temperature_start - self.temperature_decay * self.search_steps.to(torch.float32)
        return t.clamp(min=self.temperature_min)

    def method_weights(self) -> torch.Tensor:
        """[pairs, 3] softmax(logits / temperature) over the candidates offered: how much of each candidate
        each pair takes."""
        logits = self.arch_logits.masked_fill(~self.offered, float("-inf"))
        return torch.softmax(logits / self.temperature(), dim=1)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> torch.Tensor:
        parts = [self.embedding.flat(batch)]
        cross = self.embedding(batch, "cross") if self.memorised else None  # [B, memorised, pair_dim]
        product = None
        if self.factorised:
            factors = self.embedding(batch, "factor")  # [B, factor fields, pair_dim]
            product = factors.index_select(1, self.factor_left) * factors.index_select(1, self.factor_right)
        if self.searching:
            # Every pair has both candidates, in pair order; naive contributes zeros.
            weights = self.method_weights()
            mixed = weights[:, 0, None] * cross + weights[:, 1, None] * product
            parts.append(mixed.flatten(1))
        else:
            parts += [t.flatten(1) for t in (cross, product) if t is not None]
        return self.dnn(torch.cat(parts, dim=1)).squeeze(-1)

    # ------------------------------------------------------------------ search
    def architecture_parameters(self) -> list[nn.Parameter]:
        self.require_search_space()
        return [self.arch_logits]

    def after_search_step(self) -> None:
        self.search_steps += 1

    def derive_architecture(self) -> dict[str, Any]:
        """The argmax candidate per pair, with the final mixing weights and the retrained model's size."""
        self.require_search_space()
        weights = self.method_weights().detach().cpu()
        choice = weights.argmax(dim=1).tolist()
        pairs = {n: METHODS[c] for n, c in zip(self.pair_names, choice)}
        return {
            "kind": KIND,
            "pairs": pairs,
            "method_weights": {n: [round(float(w), 6) for w in row] for n, row in zip(self.pair_names, weights)},
            "temperature": float(self.temperature()),
            "search_steps": int(self.search_steps),
            "memorise_withheld": self.withheld,  # hashed pairs the search did not offer memorise (memorise_hashed=False)
            **self.summarise(pairs),
            "retrained_pair_parameters": self.pair_parameters(pairs),
        }

    def pair_parameters(self, pairs: Mapping[str, str]) -> dict[str, int]:
        """Parameters the pairs of an architecture cost once retrained, counted from the cross set's rows per
        pair and the factor set's rows per field (naive pairs cost nothing)."""
        rows = {name: self.embedding.table_rows[groups[0].key] for name, groups in self.embedding.groups.items()}
        cross_rows, factor_rows = rows.get("cross", {}), rows.get("factor", {})
        memorised = sum(cross_rows[n][1] for n, m in pairs.items() if m == "memorise")
        # Fields that share a vocabulary share its factor rows, so count each table once.
        factor_tables = {self.vocab_keys[f] for n, m in pairs.items() if m == "factorise" for f in n.split("*")}
        factored = sum(factor_rows[t][1] for t in factor_tables)
        return {"cross_rows": memorised, "cross": memorised * self.pair_dim, "factor": factored * self.pair_dim,
                "pair_inputs": sum(m != "naive" for m in pairs.values()) * self.pair_dim}

    @staticmethod
    def summarise(pairs: Mapping[str, str]) -> dict[str, Any]:
        counts = {m: sum(v == m for v in pairs.values()) for m in METHODS}
        return {"counts": counts, "share": {m: round(c / max(len(pairs), 1), 4) for m, c in counts.items()}}

    def architecture_summary(self) -> dict[str, Any]:
        return {} if self.searching else self.summarise(self.methods)
