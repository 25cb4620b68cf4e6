"""A dataset of one's own through the console commands, as docs/data.md walks it: a data config in a folder
outside the package (no batch size, no reader, field names the models have never seen, roles marked),
`recsys data inspect`, `recsys train` with its data summary and no Lightning advertisements, the run's
baselines, and a report that ranks the run among them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl


def _recsys(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "recsys.commands.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _own_data(tmp_path: Path) -> Path:
    """Raw CSVs whose label follows the listing's quality, and a config folder naming them data=shop."""
    rng = np.random.default_rng(0)
    quality = rng.normal(size=60)
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 1500), ("valid", 400), ("test", 400)):
        visitor, listing = rng.integers(0, 80, n), rng.integers(0, 60, n)
        label = (rng.random(n) < 1 / (1 + np.exp(-2 * quality[listing]))).astype(int)
        pl.DataFrame({"clicked": label, "visitor": [f"v{v}" for v in visitor], "listing": listing,
                      "price": rng.gamma(2.0, 10.0, n).round(2)}).write_csv(raw / f"{split}.csv")
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "shop.yaml").write_text(f"""name: shop
root: {raw}
files: {{train: train.csv, valid: valid.csv, test: test.csv}}
fields:
  - {{name: clicked, kind: label}}
  - {{name: visitor, kind: categorical, role: user}}
  - {{name: listing, kind: categorical, role: item}}
  - {{name: price, kind: numeric, norm: log}}
  - {{name: by_visitor, kind: group, source: visitor}}
""")
    return tmp_path / "conf"


def test_own_data_inspected_trained_with_defaults_and_reported_among_its_baselines(tmp_path) -> None:
    conf = _own_data(tmp_path)
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    inspected = _recsys("data", "inspect", "--config-dir", str(conf), "data=shop", cache, cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    assert "dataset shop" in inspected.stdout and "visitor" in inspected.stdout and "unseen test" in inspected.stdout

    out = tmp_path / "run"
    # FinalMLP's gates find their context fields by role; the data module takes its default batch size.
    trained = _recsys("train", "--config-dir", str(conf), "data=shop", "model=finalmlp", "trainer.max_epochs=1",
                      f"paths.output_dir={out}", cache, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    console = trained.stdout + trained.stderr
    assert "data shop: 1,500 / 400 / 400 rows (train / valid / test)" in console
    assert "best baseline: baseline: visitor+listing rate (val auc " in console
    for noise in ("Tip:", "Restoring states", "Loaded model weights", "TPU available"):
        assert noise not in console, noise
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_options"]["batch_size"] == 4096 and metrics["baselines"] == "baselines.json"
    baselines = json.loads((out / "baselines.json").read_text())
    assert [b["model"] for b in baselines["baselines"]] == ["baseline: constant", "baseline: visitor+listing rate"]
    assert baselines["baselines"][1]["val"]["auc"] > 0.6  # the listing's click rate carries the planted signal

    reported = _recsys("report", str(out), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    board = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "| baseline: constant |" in board and "| baseline: visitor+listing rate |" in board and "| finalmlp |" in board


def test_a_missing_own_config_names_config_dir_for_the_command_that_failed(tmp_path) -> None:
    proc = _recsys("data", "inspect", "data=mine", cwd=tmp_path)
    assert proc.returncode == 1
    assert "pass the folder that holds data/mine.yaml: recsys data inspect --config-dir DIR data=mine" in proc.stderr
