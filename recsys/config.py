"""From a composed Hydra config to the objects of a run: the dataset, the data module, the model and the
task. Every command (train, the benchmarks, export) builds them here, so there is one way to do it.

Data, task and model configs name their class with `_target_`. A data config's dataset description
(`name`, `root`, `files`, `reader`, `fields`, `recipe`, `synthetic`) goes to `prepare_dataset`; its other
keys (`batch_size`, ...) are the data module's options, each with a default. A data config without a
`_target_` gets the data module its task declares (`task_class.datamodule`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recsys.data.prepare import PreparedData, prepare_dataset
from recsys.features import Schema

# The keys of a data config that describe the dataset itself (what `prepare_dataset` reads).
DATASET_KEYS = ("name", "root", "files", "reader", "fields", "recipe", "synthetic")
DEFAULT_TASK = "recsys.tasks.ctr.CTRTask"


class ConfigError(ValueError):
    """A config that cannot be built; the message names the setting and what it accepts."""


def compose_train_config(overrides: list[str], config_dir: str | Path | None = None) -> DictConfig:
    """The config `recsys train OVERRIDES` would run, composed in-process (Hydra's compose API).
    `config_dir` adds a folder of the user's own config groups (as `--config-dir` does on the command line)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    if config_dir is not None:
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    with initialize_config_module(config_module="recsys.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def task_class(cfg: DictConfig) -> type:
    """The task class of a composed config (its `task._target_`)."""
    target = (cfg.get("task") or {}).get("_target_", DEFAULT_TASK)
    try:
        return get_class(target)
    except Exception as err:  # hydra wraps import errors in several types
        raise ConfigError(f"task._target_ {target!r} is not an importable class: {err}") from None


def dataset_description(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a data config that says what the dataset is (and keys its feature cache)."""
    data = _plain(data_cfg)
    if not data.get("name"):
        raise ConfigError("the data config has no `name`; every dataset needs one (docs/data.md)")
    return {k: data[k] for k in DATASET_KEYS if k in data}


def prepare_configured(cfg: DictConfig) -> PreparedData:
    """`prepare_dataset` for a composed config (its `data` group and `paths.cache_dir`)."""
    return prepare_dataset(dataset_description(cfg.data), cfg.paths.cache_dir)


def _checked_options(cls: type, options: dict[str, Any], what: str) -> dict[str, Any]:
    """`options` if `cls` takes every one of them; else an error naming the unknown keys and the known ones."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    known = [n for n in params if n not in ("self", "prepared", "model", "schema", "seed")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown setting(s) {unknown} for {cls.__name__}; it takes {known}")
    return options


def _datamodule_class_and_options(cfg: DictConfig) -> tuple[type, dict[str, Any]]:
    data = _plain(cfg.data)
    target = data.pop("_target_", None) or task_class(cfg).datamodule
    options = {k: v for k, v in data.items() if k not in DATASET_KEYS}
    cls = get_class(target)
    _checked_options(cls, options, f"data config {data.get('name')!r}")
    return cls, options


def datamodule_options(cfg: DictConfig) -> dict[str, Any]:
    """Every option of the config's data module (batch_size, eval_batch_size, ...): the data config's value
    where it sets one, else the class's default. Read options here, never as cfg.data.<key>, which a data
    config that leaves the default is free to omit."""
    cls, options = _datamodule_class_and_options(cfg)
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty and name != "seed"}
    return {**defaults, **options}


def build_datamodule(cfg: DictConfig, prepared: PreparedData | None = None):  # noqa: ANN201 - a LightningDataModule
    """The data module of a composed config: its dataset prepared (or `prepared` as given) and wrapped
    in the data config's `_target_`, or else the module its task declares. Only the options the data
    config sets are passed, so every other one keeps the class's default."""
    cls, options = _datamodule_class_and_options(cfg)
    prepared = prepared or prepare_configured(cfg)
    return cls(prepared, seed=int(cfg.get("seed", 0)), **options)


def build_model(model_cfg: DictConfig | Mapping[str, Any], schema: Schema) -> torch.nn.Module:
    """The model named by `_target_`, built from the schema and the config's hyper-parameters. (The
    schema is passed directly rather than through `instantiate`, which would turn it into a config.)"""
    params = _plain(model_cfg)
    target = params.pop("_target_", None)
    if not target:
        raise ConfigError("the model config has no `_target_` (the model class, e.g. recsys.models.deepfm.DeepFM)")
    cls = get_class(target)
    _checked_options(cls, params, f"model {target}")
    try:
        return cls(schema, **params)
    except ValueError as err:  # a model refuses a setting with a ValueError that names it
        raise ConfigError(f"model {target}: {err}") from err


def build_task(cfg: DictConfig, model: torch.nn.Module):  # noqa: ANN201 - a LightningModule
    """The task of a composed config around `model`."""
    params = _plain(cfg.task)
    params.pop("_target_", None)
    cls = task_class(cfg)
    _checked_options(cls, params, f"task {cls.__name__}")
    return cls(model, **params)
