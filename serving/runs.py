"""A trained run folder turned back into a scoring model: metrics.json + the Lightning checkpoint +
features/, as `recsys train` wrote them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from recsys.batch import Batch
from recsys.features import FeaturePipeline, Schema
from recsys.config import build_model


class RunError(Exception):
    """A run folder that cannot be loaded; the message says what is missing or wrong."""


class ScoringModule(torch.nn.Module):
    """What is exported and served for a CTR model: the three Batch groups in, probabilities out (sigmoid
    inside)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(Batch(sparse, dense, seq)))


class UserTower(torch.nn.Module):
    """What is exported and served for a next-item model: the three Batch groups in (the history in
    `seq`), the user vector [B, D] out; the items it is scored against go to the retrieval index."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return self.model(Batch(sparse, dense, seq))


def is_next_item(metrics: dict[str, Any]) -> bool:
    """Whether a run (by its metrics.json) predicts next items rather than scoring (user, item) pairs."""
    return metrics.get("task") == "next_item"


@dataclass
class LoadedRun:
    directory: Path
    metrics: dict[str, Any]
    config: DictConfig
    pipeline: FeaturePipeline
    scorer: ScoringModule | UserTower  # in eval mode

    @property
    def next_item(self) -> bool:
        return is_next_item(self.metrics)

    @property
    def schema(self) -> Schema:
        return self.pipeline.schema

    @property
    def features_dir(self) -> Path:
        return self.directory / str(self.metrics.get("features") or "features")


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise RunError(f"{run_dir} is not a finished run folder: it has no metrics.json")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("task") == "search":
        raise RunError(f"{run_dir} is a search run: it chose an architecture, and only the model retrained from it "
                       f"(model.architecture={run_dir}/architecture.json) is exported and served")
    if not metrics.get("checkpoint"):
        raise RunError(f"{metrics_path} names no checkpoint (the run kept none), so there are no weights to load")
    checkpoint = Path(metrics["checkpoint"])
    checkpoint = checkpoint if checkpoint.is_absolute() else run_dir / checkpoint
    if not checkpoint.exists():
        raise RunError(f"checkpoint {checkpoint} named by {metrics_path} does not exist")
    config = OmegaConf.create(metrics["config"])
    architecture = (metrics.get("architecture") or {}).get("file")
    if architecture and metrics.get("task") != "search":
        # A retrained model is built from the architecture file its run copied (recsys.commands.train), not
        # from the path its config named: that file may have moved or gone with the search run.
        if not (run_dir / architecture).is_file():
            raise RunError(f"{run_dir} was trained from the architecture file {architecture}, which is missing from it")
        config.model.architecture = str(run_dir / architecture)
    pipeline = FeaturePipeline.load(run_dir / str(metrics.get("features") or "features"))
    model = build_model(config.model, pipeline.schema)
    # weights_only: the checkpoint is read as tensors and plain containers, never unpickled as objects.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RunError(f"checkpoint {checkpoint} does not fit {metrics.get('model')}: missing {missing}, unexpected {unexpected}")
    module = UserTower(model) if is_next_item(metrics) else ScoringModule(model)
    return LoadedRun(run_dir, metrics, config, pipeline, module.eval())
