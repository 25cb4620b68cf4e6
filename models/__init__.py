"""The model zoo, imported as `recsys.models`. One file per model; each is a plain nn.Module built from
the schema and its hyper-parameters, `forward(batch) -> logits [B]` (CTR models) or the next-item
contract of `recsys.tasks.next_item`.

The registry is the Hydra config group `recsys/conf/model/`: each `<name>.yaml` names its class in
`_target_`. `REGISTRY` reads that group, so there is one list, and a model is registered by adding its
YAML file.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.resources import files

from torch import nn


@lru_cache(maxsize=1)
def registry() -> dict[str, str]:
    """{model name: class path}, from the `_target_` of each file in the config group `model/`."""
    import yaml

    group = files("recsys.conf") / "model"
    out = {}
    for entry in sorted(group.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = str(yaml.safe_load(entry.read_text())["_target_"])
    return out


def __getattr__(name: str):  # noqa: ANN202 - module attribute REGISTRY, read lazily
    if name == "REGISTRY":
        return registry()
    raise AttributeError(name)


def model_class(name: str) -> type[nn.Module]:
    try:
        target = registry()[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(registry())}") from None
    module, cls = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)
