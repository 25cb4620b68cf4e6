"""The CTR task: binary cross-entropy on logits, selection on validation AUC; AUC, gAUC and logloss on
whole evaluation splits."""

from __future__ import annotations

import torch
from torch import nn

from recsys.batch import Batch
from recsys.metrics import ctr_metrics
from recsys.tasks.base import Task


class CTRTask(Task):
    """Any zoo model with `forward(batch) -> logits [B]`. Options: see `Task`."""

    name = "ctr"
    monitor = "val/auc"
    mode = "max"
    datamodule = "recsys.data.CTRDataModule"

    def __init__(self, model: nn.Module, **options):  # noqa: ANN003 - Task's options
        super().__init__(model, **options)
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {"val": [], "test": []}
        # The last full evaluation per stage (logits, labels), kept for reports (ROC, calibration).
        self.last_predictions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch)
        loss = self.checked(nn.functional.binary_cross_entropy_with_logits(logits, batch.label), batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss + self.regularization(batch)

    def _eval_step(self, stage: str, batch: Batch) -> None:
        logits = self.model(batch)
        group = batch.group if batch.group is not None else torch.zeros_like(batch.label, dtype=torch.long)
        self._outputs[stage].append((logits.detach().cpu(), batch.label.cpu(), group.cpu()))

    def _eval_end(self, stage: str) -> dict[str, float]:
        logits, labels, groups = (self.gather(torch.cat(t)) for t in zip(*self._outputs[stage]))
        self._outputs[stage].clear()
        self.last_predictions[stage] = (logits, labels)
        metrics = ctr_metrics(logits, labels, groups)
        self.log_metrics(stage, metrics)
        return metrics
