"""The CTR task: BCE on logits, Adam, L2 on looked-up embedding rows, AUC/gAUC/logloss, LR decay on
plateau. Models stay plain nn.Modules; everything about optimisation lives here."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as L
import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding
from recsys.metrics import ctr_metrics


class CTRTask(L.LightningModule):
    """Args:
        model: any zoo model (`forward(batch) -> logits [B]`).
        learning_rate: Adam's.
        embedding_l2: lambda for 1/2 lambda ||e||^2 over embedding rows.
        embedding_l2_scope: "batch_rows" (the rows each batch looks up), "table" (whole tables
            every batch, as FuxiCTR/BARS do; the BARS experiment configs use it) or "mba" (DIN's
            mini-batch-aware regularisation: the batch's rows weighted by 1 / training count; the
            counts come from the data module's feature artifacts at setup).
        net_l2: lambda for 1/2 lambda ||w||^2 over every other parameter.
        lr_factor, min_lr: on each validation epoch without a new best AUC, multiply the LR by
            lr_factor (not below min_lr), as BARS does; early stopping is a callback.
    """

    def __init__(self, model: nn.Module, learning_rate: float = 1e-3, embedding_l2: float = 0.0, net_l2: float = 0.0,
                 embedding_l2_scope: str = "batch_rows", lr_factor: float = 0.1, min_lr: float = 1e-6, monitor: str = "val/auc"):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self._embeddings = [m for m in model.modules() if isinstance(m, FeatureEmbedding)]
        embedding_params = {id(p) for m in self._embeddings for p in m.parameters()}
        self._net_params = [p for p in model.parameters() if id(p) not in embedding_params]
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {"val": [], "test": []}
        self.history: list[dict[str, float]] = []
        # The last full evaluation per stage (logits, labels), kept for reports (ROC, calibration).
        self.last_predictions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fit_start: float | None = None

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch)

    def setup(self, stage: str) -> None:
        if self.hparams.embedding_l2_scope == "mba" and self.hparams.embedding_l2:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "row_counts"):
                raise RuntimeError("embedding_l2_scope 'mba' needs a data module that provides row_counts()")
            counts = datamodule.row_counts()
            for embedding in self._embeddings:
                embedding.set_row_counts(counts)

    def regularization(self, batch: Batch) -> torch.Tensor:
        total = torch.zeros((), device=batch.sparse.device)
        if self.hparams.embedding_l2:
            total = total + self.hparams.embedding_l2 * sum(
                m.l2_penalty(batch, self.hparams.embedding_l2_scope) for m in self._embeddings
            )
        if self.hparams.net_l2:
            total = total + self.hparams.net_l2 * 0.5 * sum(p.pow(2).sum() for p in self._net_params)
        return total

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.label)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss + self.regularization(batch)

    def _eval_step(self, stage: str, batch: Batch) -> None:
        logits = self.model(batch)
        group = batch.group if batch.group is not None else torch.zeros_like(batch.label, dtype=torch.long)
        self._outputs[stage].append((logits.detach().cpu(), batch.label.cpu(), group.cpu()))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's evaluation outputs (padded to one length for all_gather), so each
        process computes the metrics on the whole split."""
        if self.trainer.world_size <= 1:
            return tensor
        sizes = self.all_gather(torch.tensor([tensor.numel()], device=self.device)).flatten().tolist()
        padded = torch.zeros(max(sizes), dtype=tensor.dtype, device=self.device)
        padded[: tensor.numel()] = tensor.to(self.device)
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)]).cpu()

    def _eval_end(self, stage: str) -> dict[str, float]:
        logits, labels, groups = (self._gather(torch.cat(t)) for t in zip(*self._outputs[stage]))
        self._outputs[stage].clear()
        self.last_predictions[stage] = (logits, labels)
        metrics = ctr_metrics(logits, labels, groups)
        # Every process holds the same gathered metrics, so no further reduction is needed.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, prog_bar=(stage == "val"), rank_zero_only=False)
        return metrics

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_end("val")
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        elapsed = time.perf_counter() - self._fit_start if self._fit_start else float("nan")
        self.history.append({"epoch": self.current_epoch, "lr": lr, "elapsed_seconds": elapsed, **metrics})

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.hparams.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=self.hparams.lr_factor, patience=0, threshold=1e-6,
            threshold_mode="abs", min_lr=self.hparams.min_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor}}
