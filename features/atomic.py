"""Writing a folder or a file so that readers see all of it or none of it, even if the writer is killed.

The work happens in a temporary sibling named `.<target>.partial-<host>-<boot>-<pid>-<random>`, renamed into
place at the end. A writer killed with SIGKILL cannot remove its temporary, so every writer first removes
the stale ones beside its target: those whose owner was this host's process `pid` and is gone (or ran before
the last reboot). A temporary of a live process, or of another host sharing the folder, is never touched.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_RE = re.compile(r"^\..+\.partial-(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def _host_and_boot() -> tuple[str, str]:
    """This host, and this boot of it (Linux's boot id; elsewhere the host alone, so a pid is trusted
    across reboots there, which only ever keeps a stale temporary, never removes a live one)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return _short(socket.gethostname()), _short(boot)


def partial_name(target: Path) -> str:
    host, boot = _host_and_boot()
    return f".{target.name}.partial-{host}-{boot}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(name: str) -> bool:
    """A temporary left by a process of this host that no longer runs (or ran before this boot)."""
    match = PARTIAL_RE.match(name)
    if match is None:
        return False
    host, boot = _host_and_boot()
    if match["host"] != host:
        return False  # another machine's, on a shared folder: its liveness cannot be checked from here
    return match["boot"] != boot or not _pid_alive(int(match["pid"]))


def remove_stale_partials(directory: str | Path) -> list[Path]:
    """Remove the temporaries under `directory` (not below it) whose writer died; returns what was removed."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and ".partial-" in entry.name and is_stale(entry.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` by renames (an earlier
    `target` is renamed away first, then deleted, so no reader ever sees it half-deleted); on any error or
    interrupt it is removed and `target` is left as it was. Stale temporaries beside `target` go first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    tmp = target.parent / partial_name(target)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.parent / partial_name(target)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; renamed onto `path` on success, removed on error."""
    path = Path(path)
    remove_stale_partials(path.parent)
    tmp = path.parent / partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: object) -> None:
    """Write JSON to `path` through a temporary file renamed into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=float))
