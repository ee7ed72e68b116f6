"""Job lists shared by several processes: per-run claims and locked JSON updates.

A claim is an exclusive, non-blocking ``flock`` on a lock file beside the run directory; the kernel
releases it when the holding process dies, so an interrupted run is simply claimed again later.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable
from pathlib import Path

from muonscope._jsonfile import read_json, write_json


@contextlib.contextmanager
def claim(rdir: Path):
    """Yield whether this process now holds the run ``rdir`` (False: another process does)."""
    rdir.parent.mkdir(parents=True, exist_ok=True)
    with (rdir.parent / f".{rdir.name}.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive (blocking) lock tied to ``path`` for a read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_json(path: Path, change: Callable[[dict], dict], error: type[Exception]) -> dict:
    """Apply ``change`` to the JSON object in ``path`` (``{}`` if absent) under its lock; the new
    content is written atomically and returned."""
    with locked(path):
        data = read_json(path, error, missing="") if path.exists() else {}
        data = change(data)
        write_json(path, data, indent=2)
    return data
