"""The search task: the first of two runs (docs/search.md). It trains a model's search space
(`recsys.search.Searchable`, built with `model.architecture=null`) bi-level and first-order, with
Lightning's manual optimisation and two optimisers:

1. the model weights step on a *training* batch (binary cross-entropy plus the task's L2);
2. the architecture parameters step on a *validation* batch (binary cross-entropy plus the model's
   architecture penalty), after the model's gradient hook (DNIS's per-block normalisation), followed by
   its clip (DNIS's [0, 1]);
3. the model's per-step hook runs (OptInter's temperature).
The first `warmup_epochs` epochs only do step 1, with every weight (DNIS's warm start, the gates at 1);
early stopping cannot end the run before the first search epoch.

Why validation batches: the architecture is a choice made on held-out data, as a hyper-parameter is,
and the official OptInter code steps its architecture on the training batch (one-level) while choosing
its epoch on the test set. Here the test split takes no part: the data module never loads it and the
test step refuses.

Every epoch ends with a validation pass; the best *search* epoch by the monitored metric (validation AUC,
as for the CTR task) is selected, and its architecture is written to `architecture.json` in the run
folder. Warm-up epochs are never selected: when the search starts, early stopping, the checkpoint and the
LR plateau start afresh, so a warm start that scored better than every search epoch cannot hand over its
untouched architecture (DNIS's gates all at 1).
metrics.json of a search records `task: "search"`, its validation metrics and the architecture summary,
and no test metrics: the retrain is the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys.batch import Batch
from recsys.search import ARCHITECTURE_FILE, Searchable, write_architecture
from recsys.tasks.ctr import CTRTask

ARCHITECTURE_OPTIMIZERS = ("adam", "sgd")


class SearchTask(CTRTask):
    """Args:
        model: a searchable model built as its search space.
        architecture_learning_rate: the architecture optimiser's.
        architecture_optimizer: "adam" (OptInter's) or "sgd" (plain, as DNIS's).
        warmup_epochs: epochs that train the weights only, before the architecture steps start.
        Other options: see `Task` (they apply to the weight optimiser and the training loss).
    """

    name = "search"
    monitor = "val/auc"
    mode = "max"
    datamodule = "recsys.data.SearchDataModule"
    evaluates_test = False  # `recsys.commands.train` reads it: a search run never tests

    def __init__(self, model: nn.Module, architecture_learning_rate: float = 1e-3, architecture_optimizer: str = "adam",
                 warmup_epochs: int = 0, **options: Any):
        if not isinstance(model, Searchable) or not model.searching:
            raise ValueError(f"task=search needs a searchable model built as its search space (model.architecture=null); "
                             f"got {type(model).__name__}{'' if isinstance(model, Searchable) else ', which has no search space'}")
        if architecture_optimizer not in ARCHITECTURE_OPTIMIZERS:
            raise ValueError(f"architecture_optimizer must be one of {ARCHITECTURE_OPTIMIZERS}, got {architecture_optimizer!r}")
        super().__init__(model, **options)
        self.automatic_optimization = False
        # Lightning clips only under automatic optimisation; the train command hands the trainer's setting here.
        self.gradient_clip_val: float | None = None
        arch = {id(p) for p in model.architecture_parameters()}
        self._net_params = [p for p in self._net_params if id(p) not in arch]  # no L2 on the architecture

    @property
    def _weights(self) -> list[nn.Parameter]:
        """The model weights, read when used: setup may make a table anew (OptInter's counted crosses)."""
        arch = {id(p) for p in self.model.architecture_parameters()}
        return [p for p in self.model.parameters() if id(p) not in arch]

    @property
    def searching(self) -> bool:
        """Whether this epoch steps the architecture (after the warm-up epochs)."""
        return self.current_epoch >= self.hparams.warmup_epochs

    def on_fit_start(self) -> None:
        warmup = self.hparams.warmup_epochs
        if not warmup:
            return
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs <= warmup:
            raise ValueError(f"task.warmup_epochs={warmup} leaves no search epoch in trainer.max_epochs={max_epochs}: "
                             f"the search would write the untouched warm start; raise trainer.max_epochs above {warmup}")
        # Early stopping must not end the run inside the warm-up (a mixed model that overfits early, as
        # OptInter's memorised candidates do, stops improving within it): the run would never search and
        # would write the initial architecture. Lightning's min_epochs holds a stop off until the first
        # search epoch; restart_selection then gives early stopping a fresh start.
        loop = self.trainer.fit_loop
        loop.min_epochs = max(loop.min_epochs or 0, warmup + 1)

    def on_train_epoch_start(self) -> None:
        if self.hparams.warmup_epochs and self.current_epoch == self.hparams.warmup_epochs:
            restart_selection(self.trainer)

    def record_epoch(self, metrics: dict[str, float]) -> None:
        super().record_epoch({**metrics, "searching": float(self.searching)})

    def best_epoch(self) -> dict[str, float] | None:
        """The best search epoch (warm-up epochs are not candidates)."""
        searched = [h for h in self.history if h.get("searching")]
        if not searched:
            return super().best_epoch()
        history, self.history = self.history, searched
        try:
            return super().best_epoch()
        finally:
            self.history = history

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "row_counts"):
            self.model.set_row_counts(datamodule.row_counts())

    def configure_optimizers(self) -> dict[str, Any]:
        weights = self.adam(self._weights)
        arch_params = self.model.architecture_parameters()
        lr = self.hparams.architecture_learning_rate
        arch = torch.optim.Adam(arch_params, lr=lr) if self.hparams.architecture_optimizer == "adam" else torch.optim.SGD(arch_params, lr=lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            weights, mode=self.mode, factor=self.hparams.lr_factor, patience=0, threshold=1e-6,
            threshold_mode="abs", min_lr=self.hparams.min_lr,
        )
        return [weights, arch], [scheduler]

    def training_step(self, batch: tuple[Batch, Batch], batch_idx: int) -> torch.Tensor:
        train, valid = batch
        weights_opt, arch_opt = self.optimizers()
        searching = self.searching
        # 1. The weights, on a training batch.
        logits = self.model(train)
        loss = self.checked(nn.functional.binary_cross_entropy_with_logits(logits, train.label), batch_idx)
        weights_opt.zero_grad()
        self.manual_backward(loss + self.regularization(train))
        stepped = self.model.searched_weights() if searching else None
        if stepped is not None:  # weights the search leaves alone skip the step (Adam skips a None grad)
            keep = {id(p) for p in stepped}
            for p in self._weights:
                if id(p) not in keep:
                    p.grad = None
        if self.gradient_clip_val:
            self.clip_gradients(weights_opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        weights_opt.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(train))
        if not searching:
            return loss
        # 2. The architecture, on a validation batch. Only its gradient is computed.
        arch_params = self.model.architecture_parameters()
        val_loss = nn.functional.binary_cross_entropy_with_logits(self.model(valid), valid.label)
        arch_opt.zero_grad()
        grads = torch.autograd.grad(val_loss + self.model.architecture_penalty(), arch_params)
        for p, g in zip(arch_params, grads):
            p.grad = g
        self.model.before_architecture_step()
        arch_opt.step()
        self.model.after_architecture_step()
        # 3. The model's own per-step state (OptInter's temperature).
        self.model.after_search_step()
        self.log("search/val_loss", val_loss.detach(), batch_size=len(valid))
        return loss

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_end("val")
        self.record_epoch(metrics)
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            # Manual optimisation leaves the LR schedule to the task: decay on a plateau of the monitored metric.
            self.lr_schedulers().step(metrics[self.monitor.split("/", 1)[1]])

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        raise RuntimeError("a search never reads the test split: only the retrained model is evaluated on it")

    def write_artifacts(self, output_dir: Path) -> dict[str, Any]:
        """Write the selected epoch's architecture (the model holds the best checkpoint's state when the
        train command calls this) and return what metrics.json records of it."""
        if self.history and not any(h.get("searching") for h in self.history):
            raise RuntimeError(f"the run ended after {len(self.history)} warm-up epoch(s) and never searched; "
                               "there is no searched architecture to write")
        architecture = self.model.derive_architecture()
        write_architecture(Path(output_dir) / ARCHITECTURE_FILE, architecture)
        summary = {k: v for k, v in architecture.items() if k in ("counts", "share", "kept_entries", "dense_entries",
                                                                   "reduction", "mean_dims", "mean_dims_per_block",
                                                                   "mean_dims_per_table",
                                                                   "retrained_pair_parameters")}
        return {"architecture": {"file": ARCHITECTURE_FILE, "summary": summary}}


def restart_selection(trainer) -> None:  # noqa: ANN001 - a Lightning Trainer
    """Forget what early stopping, checkpoint selection and the LR plateau saw so far (the warm-up), so the
    search's epochs are compared among themselves only. A warm-up checkpoint is deleted, so the first
    search epoch's takes its file name."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping):
            callback.wait_count = 0
            callback.best_score = torch.tensor(float("inf") if callback.monitor_op == torch.lt else float("-inf"))
        elif isinstance(callback, ModelCheckpoint):
            for path in list(callback.best_k_models):
                trainer.strategy.remove_checkpoint(path)
            callback.best_k_models = {}
            callback.kth_best_model_path = callback.best_model_path = ""
            callback.best_model_score = None
            callback.kth_value = torch.tensor(float("inf") if callback.mode == "min" else float("-inf"))
    # A stop that early stopping asked for inside the warm-up (held off by min_epochs) is forgotten too.
    trainer.should_stop = False
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.best, scheduler.num_bad_epochs = scheduler.mode_worse, 0
