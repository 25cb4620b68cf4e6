"""The next-item task: predict each user's next item from their history, over the whole catalogue.

Models keep the next-item contract (models/sasrec.py): `sequence_vectors(batch) -> [B, L, D]`,
`forward(batch) -> [B, D]` (the user vector), `item_vectors() -> [items, D]` and, for distillation,
`item_similarity(items, temperature, first) -> [H, items - first]`. Scores are dot products with the item
matrix; ids 0 (padding) and 1 (out-of-vocabulary) are never candidates.

Training: full-softmax cross-entropy at every position of each training window that has a next item,
averaged over those positions (MQSA-TED's and SASRec-CE's loss). With `distill_weight` > 0, MQSA-TED's
transition-aware embedding distillation is added: for every item in the batch's inputs, the teacher is
softmax((counts / max count) / tau) over all items of that item's row of the training transition counts
(unobserved transitions included, at count 0), the student softmax(item_similarity / tau), and the loss
the cross-entropy of the student under the teacher, averaged over the input items. The teacher stays
sparse: only the rows of the batch's items are read, and the unobserved entries enter in closed form.

Evaluation: full ranking of every item for each user, the user's history masked (at test time the history
includes the validation item, so it is masked too), HR@K and NDCG@K for K in `ks` and MRR averaged over all
users (`recsys.metrics.ranking_metrics`). Only the targets' ranks are kept per batch, never a [users, items]
score matrix. Epochs are selected on validation NDCG@20.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from recsys.batch import Batch
from recsys.data.modules import CSRMatrix
from recsys.metrics import FIRST_ITEM_ID, ranking_metrics, target_ranks
from recsys.tasks.base import Task


def transition_distillation(student: torch.Tensor, heads: torch.Tensor, transitions: CSRMatrix, temperature: float,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over `heads` of -sum_j q_j log p_j over the items j >= 2, with p = softmax(student) and
    q = softmax((c / max c) / temperature), c = the head's row of the sparse `transitions` [items, items]
    (zeros included, each as exp(0)). student [H, items - 2] holds each head's similarities to items 2..
    already divided by the temperature; `weights` [H] weighs each head (its occurrences), default 1."""
    n_items = student.shape[1] + FIRST_ITEM_ID
    log_p = F.log_softmax(student, dim=1)  # [H, N - 2]
    crow, col, counts = transitions.crow, transitions.col, transitions.values
    starts, lengths = crow[heads], crow[heads + 1] - crow[heads]
    rows = torch.repeat_interleave(torch.arange(len(heads), device=heads.device), lengths)
    within = torch.arange(int(lengths.sum()), device=heads.device) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    entries = torch.repeat_interleave(starts, lengths) + within
    items, c = col[entries], counts[entries]
    row_max = torch.zeros(len(heads), device=c.device).scatter_reduce(0, rows, c, reduce="amax", include_self=False)
    logits = c / row_max[rows] / temperature  # the observed entries' teacher logits; every other item's is 0
    # Stable: q_j = exp(l_j - m) / Z with m = max(max l, 0), Z = (unobserved) exp(-m) + sum exp(l_j - m).
    shift = torch.zeros(len(heads), device=c.device).scatter_reduce(0, rows, logits, reduce="amax", include_self=False).clamp(min=0)
    observed = torch.exp(logits - shift[rows])
    unobserved = (n_items - FIRST_ITEM_ID - lengths).to(c.dtype) * torch.exp(-shift)
    z = unobserved + torch.zeros(len(heads), device=c.device).index_add(0, rows, observed)
    log_p_observed = log_p[rows, items - FIRST_ITEM_ID]
    sum_observed = torch.zeros(len(heads), device=c.device).index_add(0, rows, observed * log_p_observed)
    sum_unobserved = log_p.sum(dim=1) - torch.zeros(len(heads), device=c.device).index_add(0, rows, log_p_observed)
    cross_entropy = -(sum_observed + torch.exp(-shift) * sum_unobserved) / z
    if weights is None:
        return cross_entropy.mean()
    return (cross_entropy * weights).sum() / weights.sum()


class NextItemTask(Task):
    """Args (besides `Task`'s): distill_weight (lambda of TED; 0 leaves it out), distill_temperature (tau,
    the teacher's and the student's), ks (the cutoffs of HR and NDCG)."""

    name = "next_item"
    monitor = "val/ndcg@20"
    mode = "max"
    datamodule = "recsys.data.NextItemDataModule"

    def __init__(self, model: nn.Module, distill_weight: float = 0.0, distill_temperature: float = 0.1,
                 ks: Sequence[int] = (5, 10, 20), **options):  # noqa: ANN003 - Task's options
        super().__init__(model, **options)
        if distill_weight and not hasattr(model, "item_similarity"):
            raise ValueError(f"distill_weight > 0 needs a model with item_similarity(); {type(model).__name__} has none")
        self.ks = tuple(int(k) for k in ks)
        self._ranks: dict[str, list[torch.Tensor]] = {"val": [], "test": []}
        self.transitions: CSRMatrix | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.distill_weight and self.transitions is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "transitions"):
                raise RuntimeError("distillation needs a data module that provides transitions() (NextItemDataModule)")
            self.transitions = datamodule.transitions()

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch)

    def recommendation_loss(self, batch: Batch) -> torch.Tensor:
        vectors = self.model.sequence_vectors(batch)  # [B, L, D]
        predicted = batch.target != 0
        # Only positions that have a next item, against the items that can be one (ids >= 2).
        logits = vectors[predicted] @ self.model.item_vectors()[FIRST_ITEM_ID:].t()
        return F.cross_entropy(logits, batch.target[predicted] - FIRST_ITEM_ID)

    def distillation_loss(self, batch: Batch) -> torch.Tensor:
        inputs = batch.seq[:, 0]
        heads, occurrences = torch.unique(inputs[inputs >= FIRST_ITEM_ID], return_counts=True)
        if self.transitions.crow.device != heads.device:  # once, on the first batch on a device
            self.transitions = self.transitions.to(heads.device)
        tau = self.hparams.distill_temperature
        student = self.model.item_similarity(heads, temperature=tau, first=FIRST_ITEM_ID)
        return transition_distillation(student, heads, self.transitions, tau, occurrences.to(torch.float32))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.checked(self.recommendation_loss(batch), batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        if self.hparams.distill_weight:
            distill = self.checked(self.distillation_loss(batch), batch_idx)
            self.log("train/distill", distill, batch_size=len(batch))
            loss = loss + self.hparams.distill_weight * distill
        return loss + self.regularization(batch)

    def _eval_step(self, stage: str, batch: Batch) -> None:
        scores = self.model(batch) @ self.model.item_vectors().t()
        self._ranks[stage].append(target_ranks(scores, batch.target, batch.seq[:, 0]).cpu())

    def _eval_end(self, stage: str) -> dict[str, float]:
        ranks = self.gather(torch.cat(self._ranks[stage]))
        self._ranks[stage].clear()
        metrics = ranking_metrics(ranks, self.ks)
        self.log_metrics(stage, metrics)
        return metrics
