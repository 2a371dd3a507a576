"""A small JSON file that every process of a build updates in turn: a run's LLM budget
(``core/resources.py``), the build's request pacing (``annotate/ratelimit.py``).

An update reads the file, changes the state and writes it back under one exclusive ``flock``,
so processes (Dask workers sharing the folder) never lose each other's counts; the file is
rewritten only when the state changed. Each caller parses the bytes its own way (what a damaged
file means is the caller's to say).

>>> update_json(Path("out/_cache/budget/r1.json"), parse_counts, take_one)  # doctest: +SKIP
True
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

#: Bytes read of a ledger: far more than any of them holds.
MAX_BYTES = 1 << 16

Result = TypeVar("Result")


def update_json(
    path: Path, parse: Callable[[bytes], dict[str, Any]], change: Callable[[dict[str, Any]], Result]
) -> Result:
    """``change`` applied to the state in ``path`` (``parse`` of its bytes; empty when the file is
    new) under an exclusive lock, the state written back when it changed; ``change``'s result.
    The file and its folder are made on first use; ``OSError`` when it cannot be opened."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.pread(fd, MAX_BYTES, 0)
        state = parse(data)
        result = change(state)
        changed = json.dumps(state).encode()
        if changed != data:
            os.pwrite(fd, changed, 0)
            os.ftruncate(fd, len(changed))
        return result
    finally:
        os.close(fd)  # drops the flock


def read_unlocked(path: Path) -> bytes | None:
    """The file's bytes read without the lock (a write under way reads as a change), or None
    when it cannot be read: for callers whose most updates change nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.pread(fd, MAX_BYTES, 0)
    except OSError:  # a folder in its place: the locked update names it
        return None
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
