"""The per-request cache of LLM replies, on disk under the dataset folder.

A build killed and started again must not pay twice for a reply it already received: every
reply (and every final error) is written here, atomically, *before* it is used. The key is a
sha256 of what determines the reply — model, prompt version, rendered messages (each image
replaced by the sha256 of its bytes), response-schema hash and sampling parameters — and of
nothing else: never the endpoint's API key.

    <out>/_cache/llm/3f/3f9a...e1.json     {"kind": "reply", "content": "...", "usage": {...}}

>>> cache = ResponseCache(Path("out"))                       # doctest: +SKIP
>>> key = request_key(model="m", prompt_version="ab12", messages=msgs, schema_hash="cd34",
...                   sampling={"temperature": 0.0})         # doctest: +SKIP
>>> cache.get(key) is None                                   # doctest: +SKIP
True

A worker whose copy of the dataset is partial (``storage/output.py``) passes a ``fetch`` hook:
a key missing locally is then asked of the bucket before it counts as a miss.

One instance is shared by the shard tasks of a build (threads): reads are plain file reads,
writes go through a unique temporary name and ``os.replace``, so two writers of one key
leave one whole file, and a crash leaves either no file or the complete one.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stgr_builder.core.files import atomic_write_bytes
from stgr_builder.core.hashing import digest, sha256_bytes
from stgr_builder.core.layout import LLM_CACHE_DIR
from stgr_builder.errors import warn

CACHE_DIR = LLM_CACHE_DIR
_DATA_URL_PREFIX = "data:"


class CachedUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0


class CacheEntry(BaseModel):
    """One received reply, or the final error of a request (so a rerun does not pay again)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reply", "error"]
    content: str | None = None
    usage: CachedUsage = CachedUsage()
    images: int = 0
    error: str | None = None
    model: str = ""
    finish_reason: str | None = Field(None, description="the reply's; other than 'stop' it is unusable")


def image_digest(data: bytes) -> str:
    """What an image stands for in a request key: ``sha256:`` and the hex sha256 of its bytes."""
    return "sha256:" + sha256_bytes(data)


def _digest_images(value: Any, known: Mapping[str, str] | None = None) -> Any:
    """``value`` with every ``data:`` URL replaced by the sha256 of the bytes it carries
    (taken from ``known``, data URL to ``image_digest``, when the caller hashed it already)."""
    if isinstance(value, dict):
        return {k: _digest_images(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_digest_images(v, known) for v in value]
    if isinstance(value, str) and value.startswith(_DATA_URL_PREFIX) and ";base64," in value:
        if known:
            found = known.get(value)
            if found is not None:
                return found
        payload = value.split(";base64,", 1)[1]
        return image_digest(base64.b64decode(payload))
    return value


def request_key(
    *,
    model: str,
    prompt_version: str,
    messages: list[dict],
    schema_hash: str,
    sampling: dict[str, Any],
    digests: Mapping[str, str] | None = None,
) -> str:
    """The cache key of one request: sha256 hex over its reply-determining inputs.

    ``digests`` (data URL to ``image_digest`` of its bytes), when given, saves decoding the
    images it names; the key is the same with or without it.

    >>> k = request_key(model="m", prompt_version="p1", messages=[{"role": "user", "content": "hi"}],
    ...                 schema_hash="s1", sampling={"temperature": 0.0})
    >>> len(k), k == request_key(model="m", prompt_version="p2", messages=[{"role": "user", "content": "hi"}],
    ...                          schema_hash="s1", sampling={"temperature": 0.0})
    (64, False)
    """
    payload = {
        "model": model,
        "prompt_version": prompt_version,
        "messages": _digest_images(messages, digests),
        "schema_hash": schema_hash,
        "sampling": sampling,
    }
    return digest(payload)


class ResponseCache:
    """Replies and final errors by request key, one JSON file each, under ``root/_cache/llm``."""

    def __init__(self, root: Path, fetch: Callable[[list[str]], object] | None = None):
        self.root = Path(root)
        self.folder = self.root / CACHE_DIR
        self.fetch = fetch

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        """The stored entry, or None when missing (or unreadable: then the request is made again)."""
        path = self.path(key)
        if self.fetch is not None and not path.is_file():
            self.fetch([path.relative_to(self.root).as_posix()])  # a miss there too: no file
        try:
            return CacheEntry.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            problem = f"unreadable ({exc.strerror})" if isinstance(exc, OSError) else "not a cached reply (damaged?)"
            warn(f"{path}: {problem}; ignored, the request is made again")
            return None

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` durably and atomically. Safe from any number of threads."""
        atomic_write_bytes(self.path(key), entry.model_dump_json().encode("utf-8"))

    def keys(self) -> set[str]:
        """Every stored key (tests and audits; not used on the hot path)."""
        if not self.folder.is_dir():
            return set()
        return {p.stem for p in self.folder.glob("*/*.json")}
