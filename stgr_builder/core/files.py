"""The one atomic writer: every file stgr writes (shards, records, manifest, key frames, caches,
exports, galleries) goes through ``atomic_write``.

A file is written under a hidden temporary name in its own folder (``.NAME.<hex>.tmp``, which
no ``part-*.parquet`` or ``*.json`` glob matches), optionally fsynced, then renamed with
``os.replace``: a reader sees the old file, the whole new file, or none; two writers of one
path leave one whole file; a kill at any instant leaves at worst a stray temp file
(``temp_files`` finds them).

>>> atomic_write_bytes(Path("out/_cache/x.json"), b"{}")  # doctest: +SKIP
>>> with atomic_write(Path("out/big.json")) as handle:    # doctest: +SKIP
...     handle.write(b"[...]")
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from stgr_builder.core.hashing import sha256_file


def cache_home() -> Path:
    """The user's cache folder for stgr-builder: ``$STGR_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/stgr-builder``, else ``~/.cache/stgr-builder``. Exported detectors, text
    embeddings, staging copies of bucket datasets and local copies of bucket media live under it."""
    configured = os.environ.get("STGR_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stgr-builder"


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def temp_glob(path: Path) -> str:
    """The glob (in ``path``'s folder) that matches ``path``'s temporary names."""
    return f".{path.name}.*.tmp"


def temp_files(folder: Path) -> list[Path]:
    """Temporary files left in ``folder`` (not recursive), sorted."""
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


@contextmanager
def atomic_write(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary handle whose content lands at ``path`` whole, or not at all.

    ``durable=False`` skips the fsyncs: still atomic against a process kill (the rename is, and
    the data is in the page cache), not against power loss, where the file may come back empty
    or torn; only for stores whose readers treat an unreadable entry as missing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    try:
        with open(temp, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path, durable=durable) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> str:
    """Let ``write`` fill a temporary path (a library that wants a path, e.g. Parquet), then
    fsync and rename it; returns the sha256 of what landed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    try:
        write(temp)
        _fsync_path(temp)  # the rename must not become visible before the bytes are on disk
        digest = sha256_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write (then remove) a hidden file in it, so a read-only
    or full file system fails here, before any work, with its ``OSError`` (errno EROFS,
    EACCES, ENOSPC, ...) naming the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = temp_path(folder / "write-check")
    try:
        atomic_write_bytes(probe, b"stgr", durable=False)
    finally:
        probe.unlink(missing_ok=True)


def remove_files(paths: Iterable[Path]) -> list[Path]:
    """Unlink each path (missing ones are fine); returns them, sorted."""
    removed = []
    for path in sorted(paths):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; some network filesystems cannot fsync a folder,
    and the rename is still atomic there."""
    try:
        _fsync_path(folder)
    except OSError:
        pass


_PARQUET_MAGIC = b"PAR1"


def parquet_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a whole Parquet file (empty, cut short, not Parquet), from its
    size and its first and last four bytes; None when it may be one. Cheap enough to ask of
    every shard file before a reader or a build trusts them (the writer renames only whole files).

    >>> parquet_problem(Path("out/stgr_cot/part-00099.parquet"))  # doctest: +SKIP
    'empty (0 bytes): not a Parquet file'
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty (0 bytes): not a Parquet file"
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(max(0, size - 4))
            tail = handle.read(4)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size < 12 or head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        return f"not a Parquet file ({size} bytes without Parquet's PAR1 marks)"
    return None
