"""Every command and every benchmark answers --help with its usage and exit status 0 (issue #13, item 7),
and Python warnings are printed once per process however often a library resets its filters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _commands() -> list[list[str]]:
    from recsys.bench import parser
    from recsys.commands.cli import COMMANDS

    benches = next(a for a in parser()._actions if a.dest == "what").choices
    return [[c] for c in COMMANDS] + [["data", "inspect"]] + [["bench", b] for b in benches]


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help(command: list[str], capsys) -> None:
    if command == ["train"]:  # Hydra's own --help, in a process of its own (it takes over sys.argv)
        proc = subprocess.run([sys.executable, "-m", "recsys.commands.cli", "train", "--help"], capture_output=True, text=True,
                              timeout=300, env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "== Config ==" in proc.stdout or "Powered by Hydra" in proc.stdout
        return
    from recsys.commands.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: recsys {' '.join(command)}"), out[:300]


def test_the_top_level_help_lists_every_command(capsys) -> None:
    from recsys.commands.cli import COMMANDS, main

    main(["--help"])
    out = capsys.readouterr().out
    assert all(f"recsys {c} " in out for c in COMMANDS)


def test_bench_help_lists_the_benchmarks_and_no_internal_name(capsys) -> None:
    from recsys.commands.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "serve" in out and "zoo" in out and "_ours" not in out and "_peer" not in out


def test_a_warning_is_printed_once_even_when_the_filters_are_reset() -> None:
    """In a process of its own: pytest records warnings with a hook of its own."""
    script = """if True:
        import warnings
        from recsys.commands.cli import show_each_warning_once

        show_each_warning_once()
        for _ in range(3):
            warnings.resetwarnings()  # what libraries do while a Trainer is built: Python forgets what it showed
            warnings.simplefilter("default")
            warnings.warn("a deprecated call", DeprecationWarning, stacklevel=1)
        warnings.warn("another message", UserWarning, stacklevel=1)
    """
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("a deprecated call") == 1 and proc.stderr.count("another message") == 1, proc.stderr
