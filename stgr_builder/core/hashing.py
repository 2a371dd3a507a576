"""The one canonical-JSON digest and the one file hash.

Every key that must be the same for the same content (stage-store keys, request-cache keys,
config hashes, memo keys) hashes ``canonical_json``: sorted keys, no spaces, UTF-8 as is.

>>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stgr_builder.core.cache import BoundedCache


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces; values JSON cannot hold are written as ``str``.

    >>> canonical_json({"b": 1, "a": "é"})
    '{"a":"é","b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(value: Any) -> str:
    """Hex sha256 of ``canonical_json(value)``.

    >>> len(digest(["probe", {"min_video_s": 3}]))
    64
    """
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes (content addresses: key frames, images in requests)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks.

    >>> sha256_file(Path("out/stgr_cot/part-00000.parquet"))  # doctest: +SKIP
    '9f2c...'
    """
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


#: Bytes read at each sampled place of a media file (its start, middle and end).
FINGERPRINT_BLOCK = 64 << 10


def fingerprint_ranges(size: int) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of a file of ``size`` bytes that its fingerprint reads.

    >>> fingerprint_ranges(100), len(fingerprint_ranges(10 << 20))
    ([(0, 100)], 3)
    """
    if size <= 3 * FINGERPRINT_BLOCK:
        return [(0, size)]
    return [
        (offset, offset + FINGERPRINT_BLOCK)
        for offset in (0, (size - FINGERPRINT_BLOCK) // 2, size - FINGERPRINT_BLOCK)
    ]


def fingerprint_of(size: int, read_range: Callable[[int, int], bytes]) -> str:
    """The fingerprint of a file of ``size`` bytes whose ``read_range(start, end)`` gives those
    bytes: the same for a local file and for its copy in a bucket (read by range requests)."""
    hasher = hashlib.sha256()
    for start, end in fingerprint_ranges(size):
        hasher.update(read_range(start, end))
    return f"{size}:{hasher.hexdigest()[:32]}"


def media_fingerprint(path: Path, memo: BoundedCache[str] | None = None) -> str:
    """What stands for a media file's content in every key: its size and a sha256 of its first,
    middle and last 64 KiB (the whole file when smaller). A replacement of the same size with
    its mtime restored (``cp -p``, ``rsync -a``, ``touch -r``) gets a new fingerprint; the same
    bytes copied to another folder or machine keep theirs (no path, no time in it).

    ``memo`` (a ``BoundedCache``) remembers fingerprints by path, inode, size, mtime and ctime:
    a file rewritten in place always gets a new ctime, which no tool can restore.

    >>> media_fingerprint(Path("media/v1.mp4"))  # doctest: +SKIP
    '1048576:5d41402abc4b2a76b9719d911017c592'
    """
    import os

    stat = os.stat(path)
    stamp = (os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if memo is not None:
        known = memo.get(stamp)
        if known is not None:
            return known
    with open(path, "rb") as handle:

        def read_range(start: int, end: int) -> bytes:
            handle.seek(start)
            return handle.read(end - start)

        found = fingerprint_of(stat.st_size, read_range)
    if memo is not None:
        memo.put(stamp, found)
    return found
