"""What the sequence models share. Behaviour-sequence CTR models (DIN, SDIM, DARE): which history belongs
to which target, read from the schema, the embedded (context, target, history) views of a batch, and DIN's
target attention. Next-item models (SASRec, MQSA-TED): the history the target's vocabulary names, its
item-sequence view (`ItemSequenceEmbedding`), the causal self-attention block, and MQSA-TED's recent mean.

A sequence field that shares its vocabulary with a categorical field (`share_vocab_with`) is that
field's history: `hist_item` with `item`, `hist_attr` with `item_attr`. Attention compares the target
with its histories (the *keys*). Sequences without a target (`hist_rating`) are aligned with the history
position by position and ride along as extra *values*: whatever weight a behaviour gets, its rating
embedding gets too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn
from torch.nn import functional as F

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.features.schema import FieldSpec, Schema
from recsys.layers import MLP


@dataclass(frozen=True)
class BehaviourFields:
    targets: tuple[str, ...]  # categorical fields with a history, in schema order
    histories: tuple[str, ...]  # the history of each target, same order
    side: tuple[str, ...]  # sequences with no target: values only

    @classmethod
    def from_schema(cls, schema: Schema) -> BehaviourFields:
        sparse = {f.name for f in schema.sparse}
        pairs = [(f.share_vocab_with, f.name) for f in schema.sequence if f.share_vocab_with in sparse]
        if not pairs:
            raise ValueError(
                "a behaviour-sequence model needs a sequence field that shares the vocabulary of a categorical "
                "field (e.g. {name: hist_item, kind: sequence, share_vocab_with: item}); the schema has sequences "
                f"{[f.name for f in schema.sequence]} and categorical fields {sorted(sparse)}"
            )
        paired = {h for _, h in pairs}
        return cls(
            targets=tuple(t for t, _ in pairs),
            histories=tuple(h for _, h in pairs),
            side=tuple(f.name for f in schema.sequence if f.name not in paired),
        )


@dataclass
class BehaviourView:
    """One batch seen by a behaviour model. D is the table set's width, P the number of (target,
    history) pairs, S the number of side sequences."""

    context: torch.Tensor  # [B, C * D]: every non-sequence field that is not a target
    target: torch.Tensor  # [B, P * D]
    keys: torch.Tensor  # [B, L, P * D]: the histories, concatenated per position
    values: torch.Tensor  # [B, L, (P + S) * D]: keys, then side sequences
    mask: torch.Tensor  # [B, L]: 1 for a behaviour, 0 for padding


class BehaviourEmbedding(nn.Module):
    """The shared embedding layer, arranged for target attention.

    Args:
        schema: the fitted schema.
        dim: width of the "default" (representation) tables.
        extra_tables: more named table sets holding only the targets and their histories, e.g.
            {"attention": 16} for DARE's attention embeddings.
    """

    def __init__(self, schema: Schema, dim: int, extra_tables: dict[str, int] | None = None):
        super().__init__()
        self.fields = BehaviourFields.from_schema(schema)
        paired = self.fields.targets + self.fields.histories
        tables: dict[str, int | dict[str, int]] = {"default": dim}
        for name, width in (extra_tables or {}).items():
            tables[name] = {f: width for f in paired}
        self.embedding = FeatureEmbedding(schema, tables=tables)
        self.dim = dim
        for name in tables:
            group = self.embedding.groups[name][0]
            columns = group.sparse_fields + group.dense_fields
            self._index(name, "target_cols", [columns.index(t) for t in self.fields.targets])
            self._index(name, "context_cols", [i for i, c in enumerate(columns) if c not in self.fields.targets])
            order = [group.seq_fields.index(h) for h in self.fields.histories]
            if name == "default":
                order += [group.seq_fields.index(s) for s in self.fields.side]
            self._index(name, "seq_order", order)

    def _index(self, table: str, what: str, values: Sequence[int]) -> None:
        self.register_buffer(f"{table}__{what}", torch.tensor(values, dtype=torch.long), persistent=False)

    @property
    def num_pairs(self) -> int:
        return len(self.fields.targets)

    @property
    def num_context(self) -> int:
        return len(self.default__context_cols)

    @property
    def value_dim(self) -> int:
        return (len(self.fields.histories) + len(self.fields.side)) * self.dim

    def forward(self, batch: Batch, table: str = "default", last: int | None = None) -> BehaviourView:
        """The batch's view through table set `table`; `last=k` keeps only the k most recent behaviours
        (histories are left-padded, so they are the last k positions) and embeds nothing older."""
        if last is not None:
            batch = Batch(batch.sparse, batch.dense, batch.seq[..., -last:])
        flat = self.embedding(batch, table, pooled_sequences=False)  # [B, sparse + dense, D]
        # [B, L, P + S, D] straight from the lookup: no transpose of the embeddings afterwards.
        seqs, masks = self.embedding.sequences(batch, table, getattr(self, f"{table}__seq_order"), by_position=True)
        n_keys = self.num_pairs
        values = seqs.flatten(2)  # [B, L, (P + S) * D]
        context_cols = getattr(self, f"{table}__context_cols")
        return BehaviourView(
            context=flat.index_select(1, context_cols).flatten(1),
            target=flat.index_select(1, getattr(self, f"{table}__target_cols")).flatten(1),
            keys=values[..., : n_keys * seqs.shape[-1]],
            values=values,
            mask=masks[..., 0],
        )


class TargetAttention(nn.Module):
    """DIN's local activation unit: an MLP scores each behaviour from [q, k, q - k, q * k]; the output is
    the score-weighted sum of the behaviours' values. Padding gets weight 0. As in DIN, the weights are
    not normalised by default (softmax=False), so the output keeps the intensity of the interest."""

    def __init__(self, key_dim: int, hidden_units: Sequence[int] = (80, 40), activation: str = "dice",
                 softmax: bool = False):
        super().__init__()
        self.score = MLP(4 * key_dim, hidden_units, activation_name=activation, output_dim=1)
        self.softmax = softmax

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The first layer on [q, k, q - k, q * k] is, by blocks of its weight,
        # q (W_q + W_d)^T + k (W_k - W_d + diag(q) W_p)^T: the candidate folds into a [D, H] matrix of its
        # own, and each behaviour costs one D x H product instead of the 4D x H of the concatenated input
        # (the hot path when serving 100 candidates against a 100-long history, README "Serving").
        first = self.score[0]
        w_q, w_k, w_d, w_p = first.weight.split(keys.shape[-1], dim=1)
        per_candidate = (w_k - w_d).t() + query.unsqueeze(-1) * w_p.t()  # [B, D, H]
        hidden = torch.bmm(keys, per_candidate) + F.linear(query, w_q + w_d, first.bias).unsqueeze(1)
        # The rest of the MLP on [B * L, H]: 2-D, so an exported graph fuses each bias into its matmul.
        hidden = hidden.flatten(0, 1)
        for layer in islice(self.score, 1, None):
            hidden = layer(hidden)
        scores = hidden.view(keys.shape[:2])  # [B, L]
        if self.softmax:
            # A large negative rather than -inf: a row with no behaviour gets uniform weight on zero
            # vectors (padding rows stay zero) instead of NaN.
            weights = torch.softmax(scores.masked_fill(mask == 0, -1e9), dim=-1) * mask
        else:
            weights = scores * mask
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)


class RecencyEmbedding(nn.Module):
    """A learned embedding of how recent each history position is, in log2 buckets of its distance from
    the newest behaviour (0, 1-2, 3-6, 7-14, ...): the time embedding of DARE's official code
    (`use_time`), with position standing in for the time gap, which the histories do not carry.

    Histories are left-padded, newest last, so position j of a length-L history is L - 1 - j behaviours
    back: the buckets are a fixed buffer, the same for every row, and `forward` needs no data.
    """

    def __init__(self, max_len: int, dim: int, init_std: float = 1e-4):
        super().__init__()
        distance = torch.arange(max_len - 1, -1, -1, dtype=torch.float64)
        buckets = torch.floor(torch.log2(distance + 1)).long()
        self.register_buffer("buckets", buckets, persistent=False)  # [L]
        self.table = nn.Parameter(torch.randn(int(buckets.max()) + 1, dim) * init_std)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def forward(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """[L, dim] for every position, or [..., dim] for the given history positions."""
        buckets = self.buckets if positions is None else self.buckets[positions]
        return self.table[buckets]


# ---------------------------------------------------------------------------------------- next-item models
def next_item_history(schema: Schema) -> FieldSpec:
    """The sequence a next-item model reads: the one whose vocabulary the schema's target field shares."""
    target = schema.target
    history = next((f for f in schema.sequence if target is not None and f.name == target.share_vocab_with), None)
    if history is None:
        raise ValueError(
            "a next-item model needs a target field that shares the vocabulary of a sequence field (e.g. "
            "{name: target, kind: target, share_vocab_with: history}); the schema has sequences "
            f"{[f.name for f in schema.sequence]} and target {getattr(target, 'name', None)}"
        )
    return history


class ItemSequenceEmbedding(nn.Module):
    """The item table of the shared embedding layer, arranged for next-item models (SASRec's input layer):
    the most recent `max_len` items of the history, each item embedding scaled by sqrt(d) plus a learned
    position (column j of the left-padded window; the newest item is always the last column), dropout,
    padding zeroed. The same table, unscaled, is what the models score against (tied input and output
    embeddings), and `similarity` compares items with it (MQSA-TED's distillation student)."""

    def __init__(self, schema: Schema, dim: int, max_len: int, dropout: float, init_std: float = 0.01):
        super().__init__()
        self.history = next_item_history(schema)
        self.embedding = FeatureEmbedding(schema, dim, fields=[self.history.name], init_std=init_std)
        self.positions = nn.Parameter(torch.randn(max_len, dim) * init_std)
        self.max_len, self.dim = max_len, dim
        self.scale = dim**0.5
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors [B, max_len, D] and the mask [B, max_len] (1 for an item, 0 padding)."""
        ids = batch.seq[..., -self.max_len :]
        if ids.shape[-1] < self.max_len:  # a shorter history than the model reads: pad on the left
            ids = F.pad(ids, (self.max_len - ids.shape[-1], 0))
        emb, mask = self.embedding.sequences(Batch(batch.sparse, batch.dense, ids))
        emb, mask = emb[:, 0], mask[:, 0]
        x = self.dropout(emb * self.scale + self.positions) * mask.unsqueeze(-1)
        return x, mask

    def item_vectors(self) -> torch.Tensor:
        """[items, D], row i = item id i (0 padding, 1 out-of-vocabulary)."""
        return self.embedding.table(self.history.vocab_key)

    def similarity(self, items: torch.Tensor, temperature: float = 1.0, first: int = 0) -> torch.Tensor:
        """[H, items - first] dot products of the given items' (scaled, dropped-out) embeddings with the
        embeddings of items `first`.., divided by `temperature` (on the [H, D] side, not the wide output)."""
        table = self.item_vectors()
        return self.dropout(table[items] * (self.scale / temperature)) @ table[first:].t()


class NextItemModel(nn.Module):
    """What SASRec and MQSA-TED share around their own `sequence_vectors`: the user vector is the newest
    position's vector, and the item matrix and item similarities come from `self.items` (an
    ItemSequenceEmbedding). The contract is in models/sasrec.py."""

    items: ItemSequenceEmbedding

    def sequence_vectors(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.sequence_vectors(batch)[:, -1]

    def item_vectors(self) -> torch.Tensor:
        return self.items.item_vectors()

    def item_similarity(self, items: torch.Tensor, temperature: float = 1.0, first: int = 0) -> torch.Tensor:
        return self.items.similarity(items, temperature, first)


def recent_mean(x: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """At each position t of x [B, L, D], the mean of the up to `window` most recent items up to and
    including t (MQSA-TED's long query); padding is left out of the count, and a padding-only window
    gives 0."""
    def trailing_sum(v: torch.Tensor) -> torch.Tensor:  # sum over positions t - window + 1 .. t, by cumsum
        total = v.cumsum(dim=1)
        return total - F.pad(total, (0, 0, window, 0))[:, : v.shape[1]]

    counts = trailing_sum(mask.unsqueeze(-1))
    return trailing_sum(x * mask.unsqueeze(-1)) / counts.clamp(min=1.0)


def causal_attention_bias(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] additive attention bias: 0 where position t may attend to position s (s <= t and s is
    an item), a large negative elsewhere. Not -inf: a padding query sees only padding keys, and its row
    must stay finite (the block zeroes it). Built once per batch and shared by every block."""
    length = mask.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril() & (mask != 0)[:, None, None, :]
    return torch.zeros(allowed.shape, dtype=mask.dtype, device=mask.device).masked_fill(~allowed, -1e9)


class SelfAttentionBlock(nn.Module):
    """One causal self-attention block as the original SASRec code writes it (and MQSA-TED's towers): the
    query stream is layer-normed and queries come from it, keys and values come from the raw stream, the
    residual adds the normed query, then LayerNorm, a position-wise ReLU feed-forward of width d with
    dropout and its residual, and padding zeroed. No output projection. Attention weights get dropout."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.query_norm = nn.LayerNorm(dim, eps=1e-8)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, query_stream: torch.Tensor, kv_stream: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """query_stream, kv_stream [B, L, D]; mask [B, L]; bias [B, 1, L, L] (`causal_attention_bias`)."""
        b, length, dim = kv_stream.shape
        normed = self.query_norm(query_stream)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(normed)), heads(self.key(kv_stream)), heads(self.value(kv_stream)),
                                             attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        out = self.ffn_norm(out.transpose(1, 2).reshape(b, length, dim) + normed)
        return (out + self.ffn(out)) * mask.unsqueeze(-1)
