"""Issue #11, items 8 and 12 through the console command: a user error (bad config, bad data, a loss that
stops being finite, a folder that is no run) is one line on stderr and exit status 1, with no metrics
written; `--debug` or HYDRA_FULL_ERROR=1 shows the traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TRAINER = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
TINY = ["data.synthetic.n_train=2000", "data.synthetic.n_valid=500", "data.synthetic.n_test=500", *TRAINER]


def _recsys(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "recsys.commands.cli", *args], cwd=cwd, env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def _one_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The error report: exit status 1, no traceback, and exactly one line from recsys on stderr."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("recsys ")]
    # Anything else on stderr may only be a library's warning ("path.py:LINE: message", Lightning's).
    others = [line for line in proc.stderr.splitlines() if line.strip() and line not in ours and not re.match(r"^\S+\.py:\d+: ", line)]
    assert len(ours) == 1 and not others, proc.stderr
    assert ours[0].startswith(f"recsys {command}: ")
    return ours[0]


def _data_config(tmp_path: Path, price_row_17: str) -> Path:
    """A CSV dataset whose train split has `price_row_17` in row 17, and a config folder naming it data=bad."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        rows = [f"{i % 2},u{i % 7},{i + 0.5}" for i in range(60)]
        if split == "train":
            rows[16] = f"1,u3,{price_row_17}"
        (raw / f"{split}.csv").write_text("label,user,price\n" + "\n".join(rows) + "\n")
    conf = tmp_path / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "data" / "bad.yaml").write_text(
        f"name: bad\nroot: {raw}\nfiles: {{train: train.csv, valid: valid.csv, test: test.csv}}\nbatch_size: 16\n"
        "fields:\n  - {name: label, kind: label}\n  - {name: user, kind: categorical}\n  - {name: price, kind: numeric, norm: log}\n")
    return conf


def test_a_loss_that_stops_being_finite_stops_the_run_with_one_line_and_no_metrics(tmp_path) -> None:
    """Item 8: Task.checked raises NonFiniteLoss from the training step; through `recsys train` that is
    one line naming the epoch, batch and likely causes, exit 1, and no metrics.json."""
    out = tmp_path / "run"
    proc = _recsys("train", "model=fm", "data=synthetic", *TINY, "task.learning_rate=1e20", f"paths.output_dir={out}",
                   f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    line = _one_line(proc, "train")
    assert "the training loss became nan at epoch 0, batch " in line and "task.learning_rate=1e+20" in line
    assert not (out / "metrics.json").exists()


def test_inf_in_the_training_data_is_refused_before_training_in_one_line(tmp_path) -> None:
    """Item 8: `inf` in a numeric training column trained a NaN model (or, since Task.checked, failed after
    a 56-line traceback leaving a complete feature cache holding the inf)."""
    out = tmp_path / "run"
    proc = _recsys("train", f"--config-dir={_data_config(tmp_path, 'inf')}", "data=bad", "model=lr", *TRAINER,
                   f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    line = _one_line(proc, "train")
    assert line == (f"recsys train: train split ({tmp_path / 'raw' / 'train.csv'}), row 17 (line 18): column 'price' holds 'inf'; "
                    "numeric values must be finite numbers (empty, null or NaN means missing) (1 such row)")
    assert not (out / "metrics.json").exists() and not list((tmp_path / "cache").glob("bad-*"))


@pytest.mark.parametrize(("args", "expected"), [
    (["data=mydata"], "recsys train: no config 'mydata' in the group 'data' (known: "
                      + ", ".join(sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "data").glob("*.yaml")))
                      + "); for a config of your own, pass the folder that holds "
                      "data/mydata.yaml: recsys train --config-dir DIR data=mydata (docs/data.md)"),
    (["+model.foo=1", *TINY], "recsys train: model recsys.models.finalmlp.FinalMLP: unknown setting(s) ['foo'] for FinalMLP"),
], ids=["missing-config", "unknown-model-setting"])
def test_a_bad_config_is_one_line(tmp_path, args, expected) -> None:
    """Item 12: these were 11- to 56-line Hydra and Python tracebacks."""
    proc = _recsys("train", *args, f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert _one_line(proc, "train").startswith(expected)


def test_export_of_a_folder_that_is_no_run_is_one_line(tmp_path) -> None:
    proc = _recsys("export", f"run_dir={tmp_path}", f"out={tmp_path / 'out'}", cwd=tmp_path)
    assert _one_line(proc, "export") == f"recsys export: {tmp_path} is not a finished run folder: it has no metrics.json"


@pytest.mark.parametrize("how", ["--debug", "HYDRA_FULL_ERROR=1"])
def test_debug_or_hydra_full_error_shows_the_traceback(tmp_path, how) -> None:
    args, env = (["--debug"], None) if how == "--debug" else ([], {"HYDRA_FULL_ERROR": "1"})
    proc = _recsys("train", "data=mydata", *args, cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    assert "hydra.errors.MissingConfigException: In 'train': Could not find 'data/mydata'" in proc.stderr


def test_only_user_errors_are_one_line() -> None:
    from recsys.commands.cli import user_error_line
    from recsys.config import ConfigError
    from recsys.features import FeatureError
    from recsys.tasks.base import NonFiniteLoss

    assert user_error_line(FeatureError("valid split (x.csv), row 3: bad\nsecond line")) == "valid split (x.csv), row 3: bad second line"
    assert user_error_line(NonFiniteLoss("loss")) == "loss" and user_error_line(ConfigError("c")) == "c"
    assert user_error_line(FileNotFoundError("no such file")) == "no such file"
    assert user_error_line(ValueError("a bug")) is None and user_error_line(KeyError("k")) is None
