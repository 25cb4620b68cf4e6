"""Raw files -> fitted features and transformed splits, cached under a fingerprint of the field config,
the raw files' contents and the feature code version. Written whole or not at all."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.features import FeatureError, FeaturePipeline, Schema, scan_table
from recsys.features.atomic import atomic_directory, write_json_atomic
from recsys.features.recipes import RECIPES_VERSION, recipe_sources, write_recipe

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
# Bump when the feature code changes what a cached transform would contain.
FEATURES_CACHE_VERSION = 1


@dataclass
class PreparedData:
    name: str
    directory: Path  # holds features/ and <split>.parquet
    synthetic: bool = False

    @property
    def features_dir(self) -> Path:
        return self.directory / "features"

    def split_path(self, split: str) -> Path:
        return self.directory / f"{split}.parquet"

    @property
    def fingerprint(self) -> str:
        """The digest of the field config, raw files and feature code version that keys this cache."""
        return self.directory.name.rsplit("-", 1)[-1]

    def schema(self) -> Schema:
        return Schema.load(self.features_dir / FeaturePipeline.SCHEMA_FILE)


def _file_identity(path: Path, cache_dir: Path) -> dict[str, Any]:
    """A raw file by what it holds: name, size and SHA-256 of its bytes. The same data under another root,
    or copied afresh (a new mtime), keeps its cache and its runs' fingerprint, so a run trained yesterday
    still exports today; an edited file refits. The digest is memoised per (path, size, mtime), so a
    large file is read once, not at every run."""
    path = path.resolve()
    if path.is_dir():  # a partitioned table (Spark's and the Criteo-shaped generator's `<split>.parquet/part-*`)
        return {"name": path.name, "parts": [_file_identity(p, cache_dir) for p in sorted(path.rglob("*")) if p.is_file()]}
    stat = path.stat()
    memo = cache_dir / "file-digests" / f"{_digest([str(path), stat.st_size, stat.st_mtime_ns])}.json"
    if memo.exists():
        return json.loads(memo.read_text())
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            sha.update(block)
    identity = {"name": path.name, "size": stat.st_size, "sha256": sha.hexdigest()}
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(memo, identity)
    return identity


def resolve_files(data_cfg: Mapping[str, Any]) -> dict[str, Path]:
    """The raw split files a data config names, with an error that says how to fix a missing root."""
    root = data_cfg.get("root")
    if root in (None, "", "None", "null"):
        raise FileNotFoundError(
            f"dataset {data_cfg['name']!r} reads from RECSYS_DATA_DIR, which is not set: point it at the folder "
            f"that holds {data_cfg['name']}/ (for this repository, ../shared/data)"
        )
    files = {split: Path(str(root)) / str(data_cfg["files"][split]) for split in SPLITS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"dataset {data_cfg['name']!r}: missing raw files {missing}")
    return files


def prepare_dataset(data_cfg: Mapping[str, Any], cache_dir: str | Path) -> PreparedData:
    """Fit features on train and write every split as Parquet, once per fingerprint. The fingerprint
    covers the field config, the raw files' contents (`_file_identity`) and the feature code version, so
    a change to any of them refits. Written to a temporary folder and renamed, so an interrupted run leaves no
    half-written cache behind. A config with a `recipe:` block first has its raw splits written by
    that recipe (see `materialise_recipe`)."""
    data_cfg = dict(data_cfg)
    synthetic = bool(data_cfg.get("synthetic"))
    cache_dir = Path(cache_dir)
    if synthetic:
        data_cfg["root"] = str(_write_synthetic(dict(data_cfg["synthetic"]), cache_dir))
    elif data_cfg.get("recipe"):
        data_cfg["root"] = str(materialise_recipe(data_cfg, cache_dir))
    files = resolve_files(data_cfg)
    fields = [dict(f) for f in data_cfg["fields"]]
    reader = dict(data_cfg.get("reader") or {})
    key = {
        "version": FEATURES_CACHE_VERSION,
        "fields": fields,
        "reader": reader,
        "files": {s: _file_identity(p, cache_dir) for s, p in files.items()},
    }
    target = cache_dir / f"{data_cfg['name']}-{_digest(key)}"
    prepared = PreparedData(str(data_cfg["name"]), target, synthetic)
    if (target / "DONE").exists():
        return prepared
    with atomic_directory(target) as tmp:
        log.info("fitting features for %s on %s", data_cfg["name"], files["train"])
        pipeline = FeaturePipeline(fields).fit(scan_table(files["train"], **reader))
        pipeline.save(tmp / "features")
        for split, path in files.items():
            # Streams raw file -> transform -> Parquet without holding the raw split in memory.
            pipeline.transform(scan_table(path, **reader)).sink_parquet(tmp / f"{split}.parquet")
            check_labels(pl.scan_parquet(tmp / f"{split}.parquet"), pipeline.schema, split)
        (tmp / "fingerprint.json").write_text(json.dumps(key, indent=2))
        (tmp / "DONE").touch()
    return prepared


def _write_synthetic(options: dict[str, Any], cache_dir: Path) -> Path:
    """Write a config's synthetic raw splits under the cache, once per settings: `kind: ctr` (the default,
    recsys/data/synthetic.py) or `kind: criteo` (recsys/data/criteo_synthetic.py)."""
    kind = options.pop("kind", "ctr")
    if kind == "criteo":
        from recsys.data.criteo_synthetic import CRITEO_GENERATOR_VERSION, write_criteo_synthetic

        raw_dir = cache_dir / "raw" / f"criteo-synthetic-{_digest({**options, 'generator': CRITEO_GENERATOR_VERSION})}"
        return write_criteo_synthetic(raw_dir, **options)
    if kind != "ctr":
        raise ValueError(f"data.synthetic.kind must be 'ctr' or 'criteo', got {kind!r}")
    from recsys.data.synthetic import GENERATOR_VERSION, write_synthetic_ctr

    raw_dir = cache_dir / "raw" / f"synthetic-{_digest({**options, 'generator': GENERATOR_VERSION})}"
    return write_synthetic_ctr(raw_dir, **options)


def materialise_recipe(data_cfg: Mapping[str, Any], cache_dir: str | Path) -> Path:
    """Run the config's recipe on its source files under `data_cfg["root"]` (RECSYS_DATA_DIR), once per
    (recipe settings, source files, recipe code version): the raw splits go to
    `<cache_dir>/raw/<name>-<digest>`, which appears whole or not at all."""
    recipe = dict(data_cfg["recipe"])
    sources = recipe_sources(recipe, data_cfg.get("root"))
    key = {
        "version": RECIPES_VERSION,
        "recipe": recipe,
        "sources": {role: _file_identity(path, Path(cache_dir)) for role, path in sources.items()},
    }
    raw_dir = Path(cache_dir) / "raw" / f"{data_cfg['name']}-{_digest(key)}"
    if raw_dir.exists():  # only atomic_directory creates it, so it is complete
        return raw_dir
    with atomic_directory(raw_dir) as tmp:
        log.info("writing the raw splits of %s with recipe %s", data_cfg["name"], recipe["name"])
        rows = write_recipe(recipe, data_cfg["root"], tmp)
        (tmp / "recipe.json").write_text(json.dumps({**key, "rows": rows}, indent=2))
    return raw_dir


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_labels(frame: pl.LazyFrame, schema: Schema, split: str) -> None:
    """The transform turns a label outside {0, 1} into NaN; refuse such a split, naming the column."""
    label = schema.label
    if label is None or label.name not in frame.collect_schema().names():
        return
    bad = frame.select(pl.col(label.name).is_nan().sum()).collect(engine="streaming").item()
    if bad:
        raise FeatureError(f"split {split!r}: {bad} rows have a label other than 0 or 1 in column {label.source!r}")
