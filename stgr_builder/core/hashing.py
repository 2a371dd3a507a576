"""The one canonical-JSON digest and the one file hash.

Every key that must be the same for the same content (stage-store keys, request-cache keys,
config hashes, memo keys) hashes ``canonical_json``: sorted keys, no spaces, UTF-8 as is.

>>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
