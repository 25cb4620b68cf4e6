"""What identifies a run and what it ran on: a stable id from its resolved config (as BARS experiment
ids are), and the environment (package versions, git commit, device)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# Settings that change where or how visibly a run happens, not what it computes.
NON_IDENTIFYING = {"paths", "logger", "callbacks.model_checkpoint.dirpath", "retain_freed_memory"}
NON_IDENTIFYING_TRAINER = {"enable_progress_bar", "enable_model_summary", "log_every_n_steps", "default_root_dir"}
PACKAGES = ("recsys-zoo", "torch", "pytorch-lightning", "polars", "hydra-core", "numpy", "onnxruntime", "faiss-cpu")


def _architecture_contents(node: Any) -> Any:
    """`node` with every `architecture` value that names a file replaced by the file's SHA-256: a retrain
    is identified by the architecture it trains, wherever its file lies (docs/search.md)."""
    from recsys.search import file_digest, is_architecture_path

    if isinstance(node, dict):
        return {k: (f"sha256:{file_digest(v)}" if k == "architecture" and is_architecture_path(v) else _architecture_contents(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_architecture_contents(v) for v in node]
    return node


def run_id(config: dict[str, Any]) -> str:
    """A short stable hash of the resolved config, ignoring output locations and display settings, with an
    architecture file (model.architecture) by its contents, not its path."""
    cfg = json.loads(json.dumps(config, default=str))
    if isinstance(cfg.get("model"), dict):
        cfg["model"] = _architecture_contents(cfg["model"])
    for key in NON_IDENTIFYING:
        node, *rest = key.split(".")
        if not rest:
            cfg.pop(node, None)
        elif isinstance(cfg.get(node), dict):
            inner = cfg[node]
            for part in rest[:-1]:
                inner = inner.get(part, {}) if isinstance(inner, dict) else {}
            if isinstance(inner, dict):
                inner.pop(rest[-1], None)
    for key in NON_IDENTIFYING_TRAINER:
        cfg.get("trainer", {}).pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
    }
