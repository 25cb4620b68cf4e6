"""Search, then retrain (docs/search.md): what the search task asks of a searchable model, and the
architecture file that joins a search run to its retrain.

A searchable model (OptInter, DNIS) is built from its config like any model. With `architecture=None` it
is its own *search space*: a supernet whose architecture parameters are nn.Parameters (and whose search
state, such as OptInter's temperature step, is in buffers), so a search checkpoint resumes exactly. Only
`task=search` trains a search space; it writes the chosen architecture as `architecture.json` in its run
folder. A retrain run builds the model with `model.architecture=PATH` (or an inline keyword such as
OptInter's `memorise`), trains it from scratch with the ordinary CTR task, and is what is evaluated on
test, exported and served.

The file is JSON: `kind` (the model family), `format`, the choices (readable: method per pair, kept
dimensions per feature block), and what the search saw. The retrain copies it into its own run folder,
so an export needs nothing outside the run; the file's *contents* (SHA-256), not its path, enter the run
id (`recsys.runinfo.run_id`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARCHITECTURE_FILE = "architecture.json"
ARCHITECTURE_FORMAT = 1


class ArchitectureError(ValueError):
    """An architecture file or value that does not fit the model; the message names the file and the entry."""


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_architecture_path(value: Any, keywords: tuple[str, ...] = ()) -> bool:
    """Whether a config value names an architecture file (a string that is not one of the model's
    keywords and names an existing file)."""
    return isinstance(value, str) and value not in keywords and Path(value).is_file()


def load_architecture(value: str | Path | Mapping[str, Any], kind: str) -> dict[str, Any]:
    """An architecture as a dict: `value` is a path to a JSON file or the dict itself. Refuses a missing
    or unreadable file, and a file of another model family, naming the file."""
    if isinstance(value, Mapping):
        arch, where = dict(value), "the architecture given inline"
    else:
        path = Path(str(value))
        where = f"architecture file {path}"
        if not path.is_file():
            raise ArchitectureError(f"{where} does not exist; give model.architecture the architecture.json a "
                                    f"search run wrote (recsys train task=search ...), see docs/search.md")
        try:
            arch = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArchitectureError(f"{where} is not valid JSON: {err}") from None
        if not isinstance(arch, dict):
            raise ArchitectureError(f"{where} holds {type(arch).__name__}, not a JSON object")
    if arch.get("kind") != kind:
        raise ArchitectureError(f"{where} is of kind {arch.get('kind')!r}, but this model needs kind {kind!r}")
    if arch.get("format", ARCHITECTURE_FORMAT) != ARCHITECTURE_FORMAT:
        raise ArchitectureError(f"{where} has format {arch.get('format')!r}; this code reads format {ARCHITECTURE_FORMAT}")
    return arch


def readable_json(value: Any, level: int = 0, width: int = 110) -> str:
    """JSON with a list or object on one line when it fits in `width`, so a pair's method or a block's kept
    dimensions read as one line each."""
    compact = json.dumps(value)
    if not isinstance(value, (list, dict)) or not value or len(compact) + 2 * level <= width:
        return compact
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(str(k))}: {readable_json(v, level + 1, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    return "[\n" + ",\n".join(pad + readable_json(v, level + 1, width) for v in value) + "\n" + end + "]"


def write_architecture(path: str | Path, architecture: Mapping[str, Any]) -> None:
    """Write an architecture file (readable JSON) through a temporary file renamed into place."""
    import os
    import tempfile

    path = Path(path)
    text = readable_json({"format": ARCHITECTURE_FORMAT, **architecture}) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Searchable:
    """Mixin of the models that have a search space. The search task (recsys/tasks/search.py) calls:

    - `architecture_parameters()`: stepped on validation batches by the architecture optimiser;
    - `searched_weights()`: the weights stepped on training batches once the search has started (None:
      every weight; DNIS steps only the embeddings, as its official code does);
    - `architecture_penalty()`: added to the validation loss (DNIS's L1);
    - `before_architecture_step()` / `after_architecture_step()`: around each architecture step
      (DNIS's per-block gradient normalisation and its clip to [0, 1]);
    - `after_search_step()`: after each search iteration (OptInter's temperature);
    - `set_row_counts(counts)`: training counts per vocabulary table, at setup (DNIS's frequency blocks);
    - `derive_architecture()`: the architecture to retrain, as a JSON-ready dict.
    `architecture_summary(arch)` is what metrics.json and reports show of an architecture.
    """

    searching: bool = False

    def architecture_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def searched_weights(self) -> list[nn.Parameter] | None:
        return None

    def architecture_penalty(self) -> torch.Tensor:
        return torch.zeros(())

    def before_architecture_step(self) -> None:
        """Called with the architecture gradients in place, before the architecture optimiser steps."""

    def after_architecture_step(self) -> None:
        """Called after the architecture optimiser stepped."""

    def after_search_step(self) -> None:
        """Called after each search iteration (a weight step and an architecture step)."""

    def set_row_counts(self, counts: Mapping[str, Any]) -> None:
        """Training occurrence counts per vocabulary table (index = id)."""

    def derive_architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    def architecture_summary(self) -> dict[str, Any]:
        """What metrics.json records of the architecture this model was built with."""
        return {}

    def require_search_space(self) -> None:
        if not self.searching:
            raise ArchitectureError(f"{type(self).__name__} was built with an architecture; only its search space "
                                    "(model.architecture=null) can be searched")
