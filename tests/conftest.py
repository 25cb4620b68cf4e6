"""Shared fixtures. Real data comes from RECSYS_DATA_DIR; tests that need it skip with a reason when it
is absent, unless RECSYS_REQUIRE_DATA=1 (set by .ci/run), where a missing dataset is a failure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads TRITON_INTERPRET once, when it is first imported, and importing Lightning (recsys.data,
    # recsys.tasks) imports it: set here, before any test module is collected, so that the SDIM kernel tests
    # (tests/kernels) run in the interpreter whatever module was collected first.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _data_dir() -> Path | None:
    root = os.environ.get("RECSYS_DATA_DIR")
    return Path(root) if root else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_dir()
    if root is None or not root.is_dir():
        message = f"RECSYS_DATA_DIR is not set or not a folder ({root}); real-data tests need ../shared/data"
        if os.environ.get("RECSYS_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def real_file(data_dir: Path):
    """`real_file("frappe_x1/train.csv")`: the path under RECSYS_DATA_DIR, or skip (fail in CI) if absent."""

    def find(relative: str) -> Path:
        path = data_dir / relative
        if not path.exists():
            message = f"{path} is missing from RECSYS_DATA_DIR"
            if os.environ.get("RECSYS_REQUIRE_DATA") == "1":
                pytest.fail(message)
            pytest.skip(message)
        return path

    return find


# Small synthetic data for tests that need a full pipeline but not real data.
SMALL_SYNTHETIC = ["data=synthetic", "data.synthetic.n_train=3000", "data.synthetic.n_valid=1000",
                   "data.synthetic.n_test=1000", "data.batch_size=256"]


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory):
    """(overrides, datamodule) for the small synthetic set, prepared once per session."""
    from omegaconf import OmegaConf

    from recsys.config import compose_train_config
    from recsys.data import CTRDataModule, prepare_dataset

    cache = tmp_path_factory.mktemp("synthetic-cache")
    cfg = compose_train_config(["model=lr", *SMALL_SYNTHETIC, f"paths.cache_dir={cache}"])
    prepared = prepare_dataset(OmegaConf.to_container(cfg.data, resolve=True), cache)
    dm = CTRDataModule(prepared, batch_size=256, eval_batch_size=1024)
    dm.setup()
    return SMALL_SYNTHETIC, dm


# Small synthetic next-item data (user item sequences with planted transitions).
SMALL_NEXT_ITEM = ["data=synthetic_next_item", "task=next_item", "data.synthetic.n_users=600", "data.synthetic.n_items=120",
                   "data.batch_size=64", "data.eval_batch_size=128"]


@pytest.fixture(scope="session")
def small_next_item(tmp_path_factory: pytest.TempPathFactory):
    """(overrides, datamodule) for the small synthetic next-item set, prepared once per session."""
    from recsys.config import build_datamodule, compose_train_config

    cache = tmp_path_factory.mktemp("next-item-cache")
    cfg = compose_train_config(["model=sasrec", *SMALL_NEXT_ITEM, f"paths.cache_dir={cache}"])
    dm = build_datamodule(cfg)
    dm.setup()
    return SMALL_NEXT_ITEM, dm


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def initial_architecture(model_cfg: Any, schema: Any, row_counts: dict[str, Any], path: Path) -> list[str]:
    """For a search-then-retrain model whose config has no architecture (OptInter, DNIS): build its search
    space, derive the architecture its initial state gives (mixed choices: random OptInter logits, DNIS
    pruning of random embeddings at the default budget), write it to `path` and return the override
    that retrains it; [] for every other model. This is how the contract and export tests cover the
    retrained models without running a search."""
    from recsys.config import build_model
    from recsys.search import write_architecture

    if "architecture" not in model_cfg or model_cfg.architecture is not None:
        return []
    space = build_model(model_cfg, schema)
    space.set_row_counts(row_counts)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_architecture(path, space.derive_architecture())
    return [f"model.architecture={path}"]


@pytest.fixture(scope="session")
def retrain_architecture():
    """`initial_architecture`, for tests (conftest is not importable under --import-mode=importlib)."""
    return initial_architecture


# Tiny trained runs (one epoch of 8 steps each, at a high learning rate so that scores spread out: a
# near-constant untrained model has so many near-ties that float32 rounding alone moves its AUC by 1e-6)
# on the synthetic set, with 10,000 validation rows so that export parity runs at its full size.
SERVING_SYNTHETIC = ["data=synthetic", "data.synthetic.n_train=2000", "data.synthetic.n_valid=10000",
                     "data.synthetic.n_test=200", "data.batch_size=250", "trainer.max_epochs=1",
                     "task.learning_rate=0.01", "trainer.enable_progress_bar=false", "logger=csv"]
# Next-item runs: 3,000 users, so export parity runs on 3,000 validation users.
SERVING_NEXT_ITEM = ["data=synthetic_next_item", "task=next_item", "data.synthetic.n_items=300", "trainer.max_epochs=1",
                     "task.learning_rate=0.01", "trainer.enable_progress_bar=false", "logger=csv"]


class TinyRuns:
    """Trains a model on first use and keeps its run folder for the rest of the session."""

    def __init__(self, root: Path):
        self.root, self.cache = root, root / "cache"
        self._runs: dict[str, Path] = {}

    def __call__(self, model: str, seed: int = 2021) -> Path:
        key = f"{model}-{seed}"
        if key not in self._runs:
            from recsys.commands.train import train
            from recsys.config import compose_train_config
            from recsys.config import prepare_configured
            from recsys.features import FeaturePipeline
            from recsys.models import model_class

            out = self.root / "runs" / key
            data = SERVING_NEXT_ITEM if hasattr(model_class(model), "item_vectors") else SERVING_SYNTHETIC
            overrides = [f"model={model}", *data, f"seed={seed}", f"paths.cache_dir={self.cache}", f"paths.output_dir={out}"]
            cfg = compose_train_config(overrides)
            if "architecture" in cfg.model and cfg.model.architecture is None:
                prepared = prepare_configured(cfg)
                overrides += initial_architecture(cfg.model, prepared.schema(), FeaturePipeline.load(prepared.features_dir).row_counts(),
                                                  self.root / "architectures" / f"{key}.json")
                cfg = compose_train_config(overrides)
            train(cfg, out)
            self._runs[key] = out
        return self._runs[key]

    def raw_valid(self, n: int) -> list[dict[str, Any]]:
        """Raw validation rows as a client would send them (label dropped)."""
        from recsys.config import compose_train_config, prepare_configured

        # The synthetic set is written on first use, which need not be a training run of this session.
        prepare_configured(compose_train_config([*SERVING_SYNTHETIC, f"paths.cache_dir={self.cache}"]))
        (path,) = self.cache.glob("raw/synthetic-*/valid.csv")
        return pl.read_csv(path, n_rows=n, infer_schema_length=0).drop("label").to_dicts()

    def raw_histories(self, n: int) -> tuple[list[dict[str, Any]], list[str]]:
        """Raw validation histories of the next-item runs as a client sends them, and their next items."""
        from recsys.config import compose_train_config, prepare_configured

        prepare_configured(compose_train_config([*SERVING_NEXT_ITEM, f"paths.cache_dir={self.cache}"]))
        (path,) = [p for p in self.cache.glob("raw/synthetic-*/valid.parquet")]
        frame = pl.read_parquet(path, n_rows=n)
        return [{"history": [str(i) for i in h]} for h in frame["history"].to_list()], [str(t) for t in frame["target"]]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    return TinyRuns(tmp_path_factory.mktemp("serving"))
