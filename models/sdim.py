"""SDIM (Cao et al., CIKM 2022): long-term interest by hash sampling instead of attention.

Each behaviour and the target get m SimHash signatures of tau bits (signed random projections, a fixed
buffer). Per hash function, the behaviours whose signature equals the target's are summed and the sum
is L2-normalised; the long-term interest is the mean over the m functions. Behaviours that collide with
the target under many functions are the similar ones, so this approximates attention at the cost of a
projection, with no score per (target, behaviour) pair. Short-term interest is DIN's target attention
over the last k behaviours.

Behaviour-sequence encoding (BSE): the bucket sums depend on the user alone, so `behaviour_sums` can
precompute each user's [m, 2**tau, D] table once, and `score_with_behaviour_sums` scores any number of
candidates by hashing only the candidates. The two paths compute the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from recsys.batch import Batch
from recsys.features.schema import Schema
from recsys.kernels.sdim import bucket_sums, signatures
from recsys.layers import MLP, init_linear_layers
from recsys.sequence import BehaviourEmbedding, BehaviourView, TargetAttention


class SDIM(nn.Module):
    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        num_hashes: int = 32,
        hash_bits: int = 3,
        short_length: int = 16,
        attention_hidden_units: Sequence[int] = (80, 40),
        attention_activation: str = "dice",
        hidden_units: Sequence[int] = (200, 80),
        activation: str = "dice",
        dropout: float = 0.0,
        batch_norm: bool = False,
        projection_seed: int = 2022,
    ):
        super().__init__()
        if not 1 <= hash_bits <= 16:
            raise ValueError(f"hash_bits must be in 1..16, got {hash_bits}")
        self.behaviours = BehaviourEmbedding(schema, embedding_dim)
        self.num_hashes, self.hash_bits, self.short_length = num_hashes, hash_bits, short_length
        key_dim = self.behaviours.num_pairs * embedding_dim
        generator = torch.Generator().manual_seed(projection_seed)
        # A buffer, not a parameter: fixed random projections, saved with the model and exported.
        self.register_buffer("projections", torch.randn(key_dim, num_hashes * hash_bits, generator=generator))
        self.short_attention = TargetAttention(key_dim, attention_hidden_units, attention_activation)
        input_dim = self.behaviours.num_context * embedding_dim + key_dim + 2 * self.behaviours.value_dim
        self.dnn = MLP(input_dim, hidden_units, activation_name=activation, dropout=dropout,
                       batch_norm=batch_norm, output_dim=1)
        init_linear_layers(self)

    def forward(self, batch: Batch) -> torch.Tensor:
        view = self.behaviours(batch)
        key_codes = signatures(view.keys, self.projections, self.hash_bits)
        sums = bucket_sums(view.values, key_codes, self._target_codes(view), view.mask)
        k = self.short_length
        short = self.short_attention(view.target, view.keys[:, -k:], view.values[:, -k:], view.mask[:, -k:])
        return self._head(view, short, sums)

    def behaviour_sums(self, batch: Batch) -> torch.Tensor:
        """BSE: per user, per hash function and bucket, the sum of the behaviours in that bucket,
        [B, m, 2**tau, Dv]. Depends on the histories only, not on the targets."""
        view = self.behaviours(batch)
        codes = signatures(view.keys, self.projections, self.hash_bits)  # [B, L, m]
        buckets = F.one_hot(codes.long(), 2**self.hash_bits).to(view.values.dtype) * view.mask[:, :, None, None]
        return torch.einsum("blmk,bld->bmkd", buckets, view.values)

    def score_with_behaviour_sums(self, batch: Batch, sums: torch.Tensor) -> torch.Tensor:
        """Logits from precomputed `behaviour_sums`: only the candidates are hashed, and only the last
        `short_length` behaviours are embedded (for the short-term attention)."""
        view = self.behaviours(batch, last=self.short_length)
        codes = self._target_codes(view)  # [B, m]
        picked = sums.gather(2, codes.long()[:, :, None, None].expand(-1, -1, 1, sums.shape[-1])).squeeze(2)
        short = self.short_attention(view.target, view.keys, view.values, view.mask)
        return self._head(view, short, picked)

    def _target_codes(self, view: BehaviourView) -> torch.Tensor:
        return signatures(view.target, self.projections, self.hash_bits)

    def _head(self, view: BehaviourView, short: torch.Tensor, target_bucket_sums: torch.Tensor) -> torch.Tensor:
        # Normalised per hash function (a bucket with no behaviour stays zero), then averaged.
        long = F.normalize(target_bucket_sums, dim=-1).mean(dim=1)
        return self.dnn(torch.cat([view.context, view.target, short, long], dim=1)).squeeze(-1)
