"""The model zoo, imported as `recsys.models`. One file per model; each is a plain nn.Module built from
the schema and its hyper-parameters, `forward(batch) -> logits [B]`.

The Hydra config group `recsys/conf/model/` is the registry users select from (`model=finalmlp`); this
mapping is the same list for code, and a test checks that the two agree.
"""

from __future__ import annotations

import importlib

from torch import nn

REGISTRY: dict[str, str] = {
    "lr": "recsys.models.lr.LR",
    "fm": "recsys.models.fm.FM",
    "deepfm": "recsys.models.deepfm.DeepFM",
    "dcnv2": "recsys.models.dcnv2.DCNv2",
    "autoint": "recsys.models.autoint.AutoInt",
    "finalmlp": "recsys.models.finalmlp.FinalMLP",
    "din": "recsys.models.din.DIN",
    "din_long": "recsys.models.din.DIN",
    "sdim": "recsys.models.sdim.SDIM",
    "dare": "recsys.models.dare.DARE",
}


def model_class(name: str) -> type[nn.Module]:
    try:
        target = REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(REGISTRY)}") from None
    module, cls = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)
