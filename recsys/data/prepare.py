"""Raw files -> fitted features and transformed splits, cached under a fingerprint of the field config,
the raw files' contents and the feature code version. Written whole or not at all."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.features import FeatureError, FeaturePipeline, Schema, scan_table
from recsys.features.atomic import atomic_directory, remove_stale_partials, write_json_atomic
from recsys.features.readers import explain_read_error, first_line, infer_format
from recsys.features.recipes import RECIPES_VERSION, recipe_sources, write_recipe

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
# Bump when the feature code changes what a cached transform would contain.
FEATURES_CACHE_VERSION = 1
# The same, for the transform of numeric fields alone. It enters the key only of configs with a numeric
# field, so the caches (and runs, which record the key) of datasets without one keep their fingerprints.
# v2: NaN left out of the fitted statistics as missing; dense values clipped to the fitted range.
NUMERIC_TRANSFORM_VERSION = 2


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
            f"that holds {data_cfg['name']}/"
        )
    files = {split: Path(str(root)) / str(data_cfg["files"][split]) for split in SPLITS}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"dataset {data_cfg['name']!r}: missing raw files {missing}")
    return files


def raw_dataset(data_cfg: Mapping[str, Any], cache_dir: str | Path) -> dict[str, Any]:
    """The data config with `root` pointing at its raw split files: a synthetic set is generated and a
    recipe run first (each once per settings, into the cache); any other config is returned as it is."""
    data_cfg = dict(data_cfg)
    cache_dir = Path(cache_dir)
    if data_cfg.get("synthetic"):
        from recsys.data.criteo_synthetic import CRITEO_GENERATOR_VERSION, write_criteo_synthetic
        from recsys.data.synthetic import GENERATOR_VERSION, write_synthetic_ctr, write_synthetic_sequences

        settings = dict(data_cfg["synthetic"])
        # ctr: the first run's set (synthetic.py); next_item: its sequential twin; criteo: the Criteo-shaped
        # set of the streaming benchmark, at any size (criteo_synthetic.py).
        writers = {"ctr": write_synthetic_ctr, "next_item": write_synthetic_sequences, "criteo": write_criteo_synthetic}
        kind = settings.pop("generator", "ctr")
        if kind not in writers:
            raise FeatureError(f"dataset {data_cfg['name']!r}: unknown synthetic generator {kind!r}; expected one of {sorted(writers)}")
        version = {"ctr": GENERATOR_VERSION, "next_item": f"next_item-{GENERATOR_VERSION}",
                   "criteo": f"criteo-{CRITEO_GENERATOR_VERSION}"}[kind]
        raw_dir = cache_dir / "raw" / f"synthetic-{_digest({**settings, 'generator': version})}"
        writers[kind](raw_dir, **settings)
        data_cfg["root"] = str(raw_dir)
    elif data_cfg.get("recipe"):
        data_cfg["root"] = str(materialise_recipe(data_cfg, cache_dir))
    return data_cfg


def locate_prepared(data_cfg: Mapping[str, Any], cache_dir: str | Path) -> tuple[PreparedData, dict[str, Path], dict[str, Any]]:
    """Where `prepare_dataset` keeps this config's features (prepared or not yet: see `is_prepared`), its
    raw split files, and the cache key. Reads the raw files only to digest them (memoised)."""
    data_cfg = raw_dataset(data_cfg, cache_dir)
    cache_dir = Path(cache_dir)
    files = resolve_files(data_cfg)
    fields = [dict(f) for f in data_cfg["fields"]]
    key = {
        "version": FEATURES_CACHE_VERSION,
        "fields": fields,
        "reader": dict(data_cfg.get("reader") or {}),
        "files": {s: _file_identity(p, cache_dir) for s, p in files.items()},
    }
    if any(f.get("kind") == "numeric" for f in fields):
        key["numeric_transform"] = NUMERIC_TRANSFORM_VERSION
    target = cache_dir / f"{data_cfg['name']}-{_digest(key)}"
    return PreparedData(str(data_cfg["name"]), target, bool(data_cfg.get("synthetic"))), files, key


def is_prepared(prepared: PreparedData) -> bool:
    return (prepared.directory / "DONE").exists()


def prepare_dataset(data_cfg: Mapping[str, Any], cache_dir: str | Path) -> PreparedData:
    """Fit features on train and write every split as Parquet, once per fingerprint. The fingerprint
    covers the field config, the raw files' contents (`_file_identity`) and the feature code version, so
    a change to any of them refits. Written to a temporary folder and renamed, so an interrupted run leaves no
    half-written cache behind. A config with a `recipe:` block first has its raw splits written by
    that recipe (see `materialise_recipe`)."""
    cache_dir = Path(cache_dir)
    remove_stale_partials(cache_dir)  # left by a run killed mid-write (atomic_directory cannot clean up after SIGKILL)
    prepared, files, key = locate_prepared(data_cfg, cache_dir)
    if is_prepared(prepared):
        return prepared
    reader = key["reader"]
    pipeline = FeaturePipeline(key["fields"])
    for split, path in files.items():  # every split, before any work: one rule for all of them
        check_split(pipeline, split, path, reader)
    with atomic_directory(prepared.directory) as tmp:
        log.info("fitting features for %s on %s", prepared.name, files["train"])
        with _naming("train", files["train"], reader):
            pipeline.fit(scan_table(files["train"], **reader), check_values=False)
        pipeline.save(tmp / "features")
        for split, path in files.items():
            # Streams raw file -> transform -> Parquet without holding the raw split in memory.
            with _naming(split, path, reader):
                pipeline.transform(scan_table(path, **reader), check_values=False).sink_parquet(tmp / f"{split}.parquet")
        (tmp / "fingerprint.json").write_text(json.dumps(key, indent=2))
        (tmp / "DONE").touch()
    return prepared


def check_split(pipeline: FeaturePipeline, split: str, path: Path, reader: Mapping[str, Any]) -> int:
    """Refuse a raw split that training would trip over later, or would learn nonsense from, naming the
    split, the file and (where there is one) the row: an empty file, bytes that are not UTF-8, a row with
    more fields than the header, no rows, a missing column, a numeric value that is not a number or not
    finite, a label other than 0 and 1. The same rule for train, valid and test. Returns the row count."""
    where = f"{split} split ({path})"
    fmt = reader.get("fmt") or infer_format(path)
    if path.stat().st_size == 0:
        raise FeatureError(f"{where}: the file is empty (0 bytes); it needs a header and at least one row")
    has_header = reader.get("has_header", True)
    try:
        frame = scan_table(path, **reader, as_text=True)
        return pipeline.check_values(frame, where, first_line=first_line(fmt, has_header))
    except FeatureError as err:
        if not isinstance(err.__cause__, pl.exceptions.PolarsError):
            raise
        cause = err.__cause__
    except pl.exceptions.PolarsError as err:
        cause = err
    raise _read_error(where, path, cause, fmt, reader) from None


def _read_error(where: str, path: Path, err: Exception, fmt: str, reader: Mapping[str, Any]) -> FeatureError:
    detail = explain_read_error(path, err, fmt, separator=reader.get("separator"), has_header=reader.get("has_header", True))
    return FeatureError(f"{where}{', ' if detail.startswith('row ') else ': '}{detail}")


@contextmanager
def _naming(split: str, path: Path, reader: Mapping[str, Any]) -> Iterator[None]:
    """A reader's error while fitting or transforming, as a FeatureError naming the split and the file."""
    try:
        yield
    except pl.exceptions.PolarsError as err:
        raise _read_error(f"{split} split ({path})", path, err, reader.get("fmt") or infer_format(path), reader) from err


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
