"""What every task shares: the selection metric it declares once, Adam with LR decay on a plateau of that
metric, L2 on embedding rows and on the other weights, the per-epoch history that metrics.json records,
evaluation outputs gathered across processes, and a stop with a clear error when the loss stops being
finite. Models stay plain nn.Modules; everything about optimisation lives in the tasks."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as L
import torch
from torch import nn

from recsys.batch import Batch
from recsys.embedding import FeatureEmbedding

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the message says where and what usually causes it."""


class Task(L.LightningModule):
    """Args:
        model: a zoo model.
        learning_rate: Adam's.
        embedding_l2: lambda for 1/2 lambda ||e||^2 over embedding rows.
        embedding_l2_scope: "batch_rows" (the rows each batch looks up), "table" (whole tables every
            batch, as FuxiCTR/BARS do) or "mba" (DIN's mini-batch-aware regularisation: the batch's rows
            weighted by 1 / training count; the counts come from the data module at setup).
        net_l2: lambda for 1/2 lambda ||w||^2 over every other parameter.
        weight_decay: Adam's own L2 (added to the gradient of every parameter), as TensorFlow code that
            adds lambda * sum(w^2) / 2 for all variables does.
        lr_factor, min_lr: on each validation epoch without a better monitored metric, multiply the LR by
            lr_factor (not below min_lr), as BARS does; 1.0 keeps the LR constant. Early stopping is a callback.
        monitor: the validation metric that selects epochs and checkpoints; default the task's own.
    """

    name = "task"
    monitor = "val/loss"  # each task sets its own
    mode = "min"
    datamodule = "recsys.data.CTRDataModule"

    def __init__(self, model: nn.Module, learning_rate: float = 1e-3, embedding_l2: float = 0.0, net_l2: float = 0.0,
                 embedding_l2_scope: str = "batch_rows", weight_decay: float = 0.0, lr_factor: float = 0.1,
                 min_lr: float = 1e-6, monitor: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if monitor:
            self.monitor = monitor
        self.model = model
        self._embeddings = [m for m in model.modules() if isinstance(m, FeatureEmbedding)]
        embedding_params = {id(p) for m in self._embeddings for p in m.parameters()}
        self._net_params = [p for p in model.parameters() if id(p) not in embedding_params]
        self.history: list[dict[str, float]] = []
        self._fit_start: float | None = None

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        uncounted = [e for e in self._embeddings if e.cross_min_count > 1 and not e.crosses_counted]
        if uncounted:  # a minimum count on cross values: which values reach it, from the training split alone
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "training_pass"):
                raise RuntimeError("cross_min_count needs a data module that provides training_pass()")
            for embedding in uncounted:
                for key, rows in embedding.count_crosses(datamodule.training_pass()).items():
                    log.info("%s: %s of the %s cross values seen in training reach the minimum count %d and get rows; "
                             "the rest share one row per pair", key, f"{rows['kept']:,}", f"{rows['seen']:,}",
                             embedding.cross_min_count)
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

    def checked(self, loss: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """`loss`, or a NonFiniteLoss naming the step and epoch: a NaN loss would otherwise train on into
        NaN weights and write metrics that look like a result."""
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(
                f"the training loss became {float(loss.detach())} at epoch {self.current_epoch}, batch {batch_idx} "
                f"(global step {self.global_step}). Usual causes: an infinite or huge value in a numeric input "
                f"column (a numeric field with norm: null passes raw values through; use norm: log or standard), "
                f"or a learning rate too high for this model (task.learning_rate={self.hparams.learning_rate})"
            )
        return loss

    def adam(self, params: Any) -> torch.optim.Adam:
        """The weights' Adam. Its fused kernel (one pass per parameter for the whole update: ~1.2 of a 68 ms
        DeepFM step on 2 CPU cores) runs in full precision only: under mixed precision Lightning refuses
        gradient clipping with an optimiser that unscales its own gradients, as a fused one declares."""
        params = list(params)
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"
        fused = precision in ("32-true", "64-true") and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
        )
        return torch.optim.Adam(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay,
                                fused=fused or None)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.adam(self.model.parameters())
        if self.hparams.lr_factor >= 1.0:
            return {"optimizer": optimizer}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=self.mode, factor=self.hparams.lr_factor, patience=0, threshold=1e-6,
            threshold_mode="abs", min_lr=self.hparams.min_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, stage: str, batch: Batch) -> None:
        """Keep what `_eval_end` needs from one evaluation batch of `stage` ("val" or "test")."""
        raise NotImplementedError

    def _eval_end(self, stage: str) -> dict[str, float]:
        """The metrics of a whole evaluation split, logged; the kept outputs cleared."""
        raise NotImplementedError

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        self.record_epoch(self._eval_end("val"))

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's evaluation outputs along dim 0 (padded to one length for
        all_gather), so each process computes the metrics on the whole split."""
        if self.trainer.world_size <= 1:
            return tensor
        sizes = self.all_gather(torch.tensor([tensor.shape[0]], device=self.device)).flatten().tolist()
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[: tensor.shape[0]] = tensor.to(self.device)
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)]).cpu()

    def log_metrics(self, stage: str, metrics: dict[str, float]) -> None:
        # Every process holds the same gathered metrics, so no further reduction is needed.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, prog_bar=(stage == "val"), rank_zero_only=False)

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def record_epoch(self, metrics: dict[str, float]) -> None:
        """One validation epoch of a fit in `history` (what metrics.json and the report's curves read)."""
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        elapsed = time.perf_counter() - self._fit_start if self._fit_start else float("nan")
        self.history.append({"epoch": self.current_epoch, "lr": lr, "elapsed_seconds": elapsed, **metrics})

    def best_epoch(self) -> dict[str, float] | None:
        """The history entry with the best monitored metric (NaN never wins)."""
        key = self.monitor.split("/", 1)[1]
        scored = [h for h in self.history if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda h: h[key])
