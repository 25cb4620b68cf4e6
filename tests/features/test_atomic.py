"""Issue #11, item 11: a writer killed with SIGKILL leaves its temporary folder; the next writer beside it
removes it, and never one whose owner still runs. Run outputs are git-ignored, so a run from a fresh
clone does not record its commit as -dirty."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.features.atomic import _host_and_boot, atomic_directory, partial_name, remove_stale_partials, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _partial(folder: Path, target: str, *, host: str | None = None, boot: str | None = None, pid: int | None = None) -> Path:
    own_host, own_boot = _host_and_boot()
    path = folder / f".{target}.partial-{host or own_host}-{boot or own_boot}-{pid or os.getpid()}-0badc0de"
    path.mkdir()
    (path / "half-written").write_text("x")
    return path


def test_stale_temporaries_go_and_live_or_foreign_ones_stay(tmp_path) -> None:
    dead = _partial(tmp_path, "cache-a", pid=_dead_pid())
    rebooted = _partial(tmp_path, "cache-b", boot="0" * 8, pid=os.getpid())  # same pid number, an earlier boot
    live = _partial(tmp_path, "cache-c")  # this process: alive
    foreign = _partial(tmp_path, "cache-d", host="f" * 8, pid=_dead_pid())  # another host's: cannot be checked
    legacy = tmp_path / ".synthetic_ctr-4a1b2c3d-k2j3h4x5"  # an older version's name: owner unknown
    legacy.mkdir()
    other = tmp_path / ".keep.me"
    other.mkdir()
    stale_file = tmp_path / f".metrics.json.partial-{'-'.join(_host_and_boot())}-{_dead_pid()}-0badc0de"
    stale_file.write_text("{")

    with atomic_directory(tmp_path / "export") as tmp:
        assert tmp.name.startswith(".export.partial-") and str(os.getpid()) in tmp.name
        (tmp / "model.onnx").write_text("weights")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["export", live.name, foreign.name, legacy.name, other.name]), left
    assert not dead.exists() and not rebooted.exists() and not stale_file.exists()


def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_next_writer_removes(tmp_path) -> None:
    script = (
        "import sys, time\n"
        "from recsys.features.atomic import atomic_directory\n"
        "with atomic_directory(sys.argv[1]) as tmp:\n"
        "    (tmp / 'part').write_text('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(120)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "features")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        (debris,) = tmp_path.iterdir()
        assert debris.name.startswith(".features.partial-")
        remove_stale_partials(tmp_path)
        assert debris.exists()  # its writer is alive: kept
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert debris.exists() and not (tmp_path / "features").exists()  # what SIGKILL leaves: the temporary only
        write_json_atomic(tmp_path / "metrics.json", {"auc": 0.5})  # the next writer in the folder
        assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    finally:
        writer.kill()
        writer.wait()


def test_prepare_removes_debris_from_its_cache_even_when_the_cache_is_complete(tmp_path) -> None:
    import polars as pl

    from recsys.data import prepare_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        pl.DataFrame({"label": [0, 1, 1], "user": ["a", "b", "c"]}).write_csv(raw / f"{split}.csv")
    cfg = {"name": "tiny", "root": str(raw), "files": {s: f"{s}.csv" for s in ("train", "valid", "test")},
           "fields": [{"name": "label", "kind": "label"}, {"name": "user", "kind": "categorical"}]}
    prepared = prepare_dataset(cfg, tmp_path / "cache")
    debris = _partial(tmp_path / "cache", prepared.directory.name, pid=_dead_pid())
    assert prepare_dataset(cfg, tmp_path / "cache").directory == prepared.directory  # the cache is reused
    assert not debris.exists()


def test_replacing_a_target_leaves_no_temporary_and_the_new_contents(tmp_path) -> None:
    for version in ("old", "new"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "v").write_text(version)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "v").read_text() == "new"
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "v").write_text("broken")
        raise RuntimeError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "v").read_text() == "new"
    assert partial_name(tmp_path / "out") != partial_name(tmp_path / "out")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_run_outputs_and_temporaries_are_git_ignored(tmp_path) -> None:
    """A run from a fresh clone records `git status --porcelain` in its commit (-dirty when not empty):
    what `recsys train`, `recsys export` and the caches write must not show there."""
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("add", ".gitignore")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    written = ["outputs/runs/fm_synthetic/2026-11-30/metrics.json", "runs/finalmlp/checkpoints/best.ckpt", "exports/fm/model.onnx",
               "multirun/2026-11-30/0/metrics.json", ".cache/recsys-zoo/synthetic_ctr-0123/DONE", "lightning_logs/version_0/x",
               f"{partial_name(Path('exp'))}/model.onnx", f"{partial_name(Path('metrics.json'))}", ".hypothesis/examples/x"]
    for relative in written:
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text("x")
    assert git("status", "--porcelain", "--untracked-files=all") == ""
