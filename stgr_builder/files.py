"""Atomic small-file writes shared by the on-disk stores (LLM request cache, stage store)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file, the whole new file, or none.

    Temp file in the same folder, fsync, then ``os.replace``: safe from any number of threads
    (two writers of one path leave one whole file) and against a kill at any instant.
    ``durable=False`` skips the fsync: still atomic against a process kill (the rename is, and
    the data is in the page cache), not against power loss, where the file may come back empty
    or torn; only for stores whose readers treat an unreadable entry as missing (the stage
    store: it recomputes). The LLM request cache stays durable: a lost reply is paid again.

    >>> atomic_write_bytes(Path("out/_cache/x.json"), b"{}")  # doctest: +SKIP
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
