"""Atomic small-file writes shared by the on-disk stores (LLM request cache, stage store)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file, the whole new file, or none.

    Temp file in the same folder, fsync, then ``os.replace``: safe from any number of threads
    (two writers of one path leave one whole file) and against a kill at any instant.

    >>> atomic_write_bytes(Path("out/_cache/x.json"), b"{}")  # doctest: +SKIP
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
