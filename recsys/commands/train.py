"""One training run from a composed config: prepare data, train with selection on validation, evaluate
the selected checkpoint on test, and write metrics.json, the checkpoint and the feature artifacts."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.allocator import retain_freed_memory
from recsys.baselines import BASELINES_FILE, beats, best_baseline, dataset_baselines
from recsys.config import (ConfigError, build_datamodule, build_model, build_task, datamodule_options, dataset_description,
                           prepare_configured)
from recsys.embedding import FeatureEmbedding
from recsys.features.atomic import write_json_atomic
from recsys.runinfo import environment, run_id
from recsys.search import ARCHITECTURE_FILE, file_digest, is_architecture_path

log = logging.getLogger(__name__)

# Lightning's lines that say nothing about this run: advertisements, absent accelerators, and the checkpoint
# reloads before validation and test (metrics.json records which checkpoint was evaluated).
LIGHTNING_NOISE = ("💡 Tip:", "TPU available:", "HPU available:", "IPU available:", "Restoring states from the checkpoint",
                   "Loaded model weights from the checkpoint", "Seed set to")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Drop LIGHTNING_NOISE from Lightning's loggers (once per process; warnings and errors pass)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


class TrainThroughput(L.Callback):
    """Counts time spent in training epochs only (validation excluded), for samples/s."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.samples = 0
        self.epoch_seconds: list[float] = []  # each training epoch's own time
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        # A search's batch is a (training, validation) pair: the training rows are what it trained on.
        self.samples += len(batch[0]) if isinstance(batch, tuple) else len(batch)

    def _stop(self) -> None:
        elapsed = time.perf_counter() - self._start
        self.seconds += elapsed
        self.epoch_seconds.append(elapsed)
        self._start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self._stop()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:  # no validation ran this epoch
            self._stop()


def _relative(path: str, root: Path) -> str:
    """`path` relative to the run folder when it lies inside it (so a run folder can be moved)."""
    resolved, base = Path(path).resolve(), root.resolve()
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(resolved)


def write_predictions(task: L.LightningModule, path: Path) -> None:
    """Validation and test scores of the selected checkpoint, for ROC and calibration plots (CTR tasks)."""
    frames = [
        pl.DataFrame({"split": split, "logit": logits.float().numpy(), "label": labels.float().numpy()})
        for split, (logits, labels) in getattr(task, "last_predictions", {}).items()
    ]
    if frames:
        pl.concat(frames).write_parquet(path)


def selection_callbacks(cfg: DictConfig, task: L.LightningModule) -> list[L.Callback]:
    """The configured callbacks; early stopping and checkpointing watch the task's own metric unless the
    config names another."""
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        watches = {"monitor": task.monitor, "mode": task.mode}
        target = str(node.get("_target_", ""))
        if target.endswith(("EarlyStopping", "ModelCheckpoint")):
            callbacks.append(instantiate(node, **{k: v for k, v in watches.items() if node.get(k) is None}))
        else:
            callbacks.append(instantiate(node))
    return callbacks


def _baselines_line(baselines: dict[str, Any] | None, monitor: str, mode: str) -> str | None:
    key = monitor.split("/", 1)[1]
    best = best_baseline((baselines or {}).get("baselines") or [], key, mode)
    return None if best is None else f"{best['model']} (val {key} {best['val'][key]:.4f})"


def train(cfg: DictConfig, output_dir: str | Path, extra_callbacks: list[L.Callback] | None = None,
          data_summary: bool = True) -> dict[str, Any]:
    """One run. `extra_callbacks` join the configured ones (a command's display, e.g. bench zoo's nested
    progress bar) without entering the run's config or id. `data_summary=False` leaves out the data
    summary at the start (a command that trains several models on one dataset prints it once)."""
    from recsys.data.inspection import inspect_dataset

    quiet_lightning()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    retains_freed_memory = bool(cfg.get("retain_freed_memory", True)) and retain_freed_memory()
    prepared = prepare_configured(cfg)
    inspection = inspect_dataset(dataset_description(cfg.data), cfg.paths.cache_dir)  # cached beside the prepared data
    datamodule = build_datamodule(cfg, prepared)
    datamodule.setup()
    model = build_model(cfg.model, datamodule.schema)
    task = build_task(cfg, model)
    baselines = dataset_baselines(prepared, task.name, getattr(task, "ks", (5, 10, 20)))
    bar = _baselines_line(baselines, task.monitor, task.mode)
    if data_summary:
        (log.warning if inspection.warnings else log.info)(inspection.summary() + (f"\nbest baseline: {bar}" if bar else ""))
    if getattr(model, "searching", False) and getattr(task, "evaluates_test", True):
        raise ConfigError(f"model {cfg.model_name} was built as its search space (model.architecture=null): search it "
                          f"with task=search, then retrain with model.architecture=<search run>/{ARCHITECTURE_FILE} "
                          "(docs/search.md)")

    throughput = TrainThroughput()
    callbacks = [*selection_callbacks(cfg, task), throughput, *(extra_callbacks or [])]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer_options = {}
    if not task.automatic_optimization and cfg.trainer.get("gradient_clip_val"):
        # Lightning clips only under automatic optimisation; a manual-optimisation task clips itself.
        task.gradient_clip_val = float(cfg.trainer.gradient_clip_val)
        trainer_options["gradient_clip_val"] = None
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **trainer_options)
    checkpoint = next((c for c in callbacks if isinstance(c, L.callbacks.ModelCheckpoint)), None)

    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    ckpt = "best" if checkpoint is not None and checkpoint.best_model_path else None
    # Each evaluation of the selected checkpoint is timed: for a next-item task it is the full ranking of
    # every user against every item (docs/next_item.md reports Yelp's).
    start = time.perf_counter()
    val = trainer.validate(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
    eval_seconds = {"val": time.perf_counter() - start}
    # A search run is not a result: only its retrain is evaluated on test (recsys/tasks/search.py).
    evaluates_test = getattr(task, "evaluates_test", True)
    start = time.perf_counter()
    test = trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0] if evaluates_test else None
    if evaluates_test:
        eval_seconds["test"] = time.perf_counter() - start

    history = task.history
    best = task.best_epoch()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = {
        "run_id": run_id(resolved),
        "model": cfg.model_name,
        "dataset": prepared.name,
        "task": task.name,
        # The metric that selected the epoch and the checkpoint: what reports rank by and sweeps optimise.
        "monitor": task.monitor,
        "mode": task.mode,
        "synthetic_data": prepared.synthetic,
        "data_fingerprint": prepared.fingerprint,
        "val": {k.split("/", 1)[1]: v for k, v in val.items()},
        **({"test": {k.split("/", 1)[1]: v for k, v in test.items()}} if test is not None else {}),
        "best_epoch": best["epoch"] if best else None,
        "epochs": len(history),
        "train_seconds": throughput.seconds,
        "train_epoch_seconds": throughput.epoch_seconds,
        "fit_seconds": fit_seconds,
        "eval_seconds": eval_seconds,  # the selected checkpoint's evaluation, checkpoint loading included
        "time_to_best_seconds": best["elapsed_seconds"] if best else None,
        # Each process counts its own shard; together they trained world_size times as many rows.
        "train_samples_per_second": throughput.samples * trainer.world_size / throughput.seconds if throughput.seconds else None,
        "world_size": trainer.world_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_embedding_parameters": sum(p.numel() for m in model.modules() if isinstance(m, FeatureEmbedding)
                                        for p in m.parameters()),
        "selected_on": "valid",
        "history": history,
        "checkpoint": _relative(checkpoint.best_model_path, output_dir) if ckpt else None,
        "features": "features",
        "predictions": "predictions.parquet" if getattr(task, "last_predictions", None) else None,
        "baselines": BASELINES_FILE if baselines else None,
        # The data module's options in effect, defaults included (a data config need not set them).
        "data_options": datamodule_options(cfg),
        "config": resolved,
        "environment": {**environment(), "retains_freed_memory": retains_freed_memory},
    }
    if trainer.is_global_zero:  # one writer under data parallelism
        if hasattr(task, "write_artifacts"):  # a search: the selected architecture
            metrics.update(task.write_artifacts(output_dir))
        metrics.update(retrained_architecture(cfg, model, output_dir))
        shutil.copytree(prepared.features_dir, output_dir / "features", dirs_exist_ok=True)
        write_predictions(task, output_dir / "predictions.parquet")
        if baselines:
            write_json_atomic(output_dir / BASELINES_FILE, baselines)
        write_json_atomic(output_dir / "metrics.json", metrics)
    key = task.monitor.split("/", 1)[1]
    value = metrics["val"].get(key, float("nan"))
    if key in metrics.get("test", {}):
        test = f", test {key} {metrics['test'][key]:.4f}"
    elif hasattr(task, "write_artifacts"):  # a search reads no test split: say so, and what comes next
        test = (" (a search: the test split is not read; retrain the chosen architecture with "
                f"model.architecture={output_dir / 'architecture.json'})")
    else:
        test = ", no test metrics"
    log.info("%s on %s: val %s %.4f%s", metrics["model"], metrics["dataset"], key, value, test)
    best = best_baseline((baselines or {}).get("baselines") or [], key, task.mode)
    if best is not None and not beats(value, best["val"][key], task.mode):
        log.warning("%s does NOT beat the best baseline on validation: %s", metrics["model"], _baselines_line(baselines, task.monitor, task.mode))
    return metrics


def retrained_architecture(cfg: DictConfig, model: torch.nn.Module, output_dir: Path) -> dict[str, Any]:
    """For a model built from an architecture (a search-then-retrain model): its summary, and the
    architecture file copied into the run folder (metrics.json names the copy and its SHA-256), so the
    run's export needs nothing outside the run folder."""
    summary = model.architecture_summary() if hasattr(model, "architecture_summary") and not getattr(model, "searching", False) else {}
    source = cfg.model.get("architecture")
    if not summary and not is_architecture_path(source):
        return {}
    entry: dict[str, Any] = {"summary": summary}
    if is_architecture_path(source):
        shutil.copyfile(source, output_dir / ARCHITECTURE_FILE)
        entry.update(file=ARCHITECTURE_FILE, sha256=file_digest(source), source=str(Path(source).resolve()))
    else:
        entry["value"] = source
    return {"architecture": entry}


def monitored_value(metrics: dict[str, Any]) -> float:
    """The validation value of the metric a finished run was selected on (older runs: AUC)."""
    key = str(metrics.get("monitor", "val/auc")).split("/", 1)[1]
    value = (metrics.get("val") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else float("nan")


def find_finished(root: str | Path, rid: str) -> dict[str, Any] | None:
    """A metrics.json under `root` written by a run with this run id, if any."""
    for path in Path(root).rglob("metrics.json"):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(metrics, dict) and metrics.get("run_id") == rid and "val" in metrics:
            return metrics
    return None


def train_or_resume(cfg: DictConfig, output_dir: str | Path, sweep_dir: str | Path | None = None) -> float:
    """The sweep-facing entry: returns the validation value of the task's monitored metric (what
    sweepers optimise; AUC for CTR).

    In a sweep (`sweep_dir` set), a run whose run id already finished anywhere under the sweep folder is
    skipped, so rerunning the same sweep command resumes it; and a run that fails writes error.json
    (run id, error, traceback) and returns NaN, so one bad setting does not stop the sweep. Outside a
    sweep, errors propagate."""
    rid = run_id(OmegaConf.to_container(cfg, resolve=True))
    if sweep_dir is not None:
        done = find_finished(sweep_dir, rid)
        if done is not None:
            log.info("run %s already finished (%s): skipped", rid, done.get("model"))
            return monitored_value(done)
    try:
        value = monitored_value(train(cfg, output_dir))
        (Path(output_dir) / "error.json").unlink(missing_ok=True)  # a retry that succeeded
        return value
    except Exception as err:
        if sweep_dir is None:
            raise
        import traceback

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(output_dir) / "error.json", {
            "run_id": rid, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
        })
        log.error("run %s failed and was recorded in %s/error.json: %s", rid, output_dir, err)
        return float("nan")
