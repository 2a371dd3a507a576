"""A small JSON object in a bucket that processes sharing nothing but the bucket update in
turn: a run's LLM budget when the build's Dask or Ray workers each work on their own copy
(``CommittingJob(isolated=True)``): ``SharedObject``. The local twin is ``core/ledger.update_json``
(a ``flock``); ``update_shared_json`` takes either a path or a URL.

An update is a compare-and-swap: read the object (its ETag, then its bytes; absent = empty),
apply the change, and write it back only if it changed, with a conditional PUT (``If-Match`` the
ETag read, or ``If-None-Match: *`` when there was none). A writer that lost the race (412) reads
again and retries, a bounded number of times with a small jittered backoff.

>>> update_shared_json("s3://bucket/ds/_cache/budget/r1.json", parse_counts, take_one)  # doctest: +SKIP
True

What a new object's process sees of the store is the environment's (``AWS_ENDPOINT_URL``,
credentials), read when it first connects: a fresh filesystem, never fsspec's shared instance.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stgr_builder.core.ledger import update_json
from stgr_builder.errors import StgrError
from stgr_builder.storage.location import filesystem, is_url, store_errors

Result = TypeVar("Result")

#: Conditional writes tried before giving up: each lost one means another writer's landed, so
#: even a dozen processes spending at once get through in a few.
TRIES = 40
#: The backoff after a lost write: uniform in [0, min(BACKOFF * 2**n, MAX_BACKOFF)] seconds.
BACKOFF = 0.01
MAX_BACKOFF = 0.5
#: The key, beside the caller's state, holding the ids of the last writes (newest last): a write
#: whose reply was lost (a dropped connection after the store took it; the client's retry then
#: gets a 412) is found there instead of being applied twice. Never handed to ``change``.
WRITES_KEY = "_writes"
KEPT_WRITES = 64


def update_shared_json(
    location: Path | str, parse: Callable[[bytes], dict[str, Any]], change: Callable[[dict[str, Any]], Result]
) -> Result:
    """``change`` applied to the JSON state at ``location``, every process of a build seeing
    every other's changes: a local file under a ``flock`` (``core/ledger.update_json``), or an
    object in a bucket by compare-and-swap (``SharedObject``). For one update; a caller that
    updates often keeps a ``SharedObject`` (one connection)."""
    if is_url(location):
        return SharedObject(str(location)).update(parse, change)
    return update_json(Path(location), parse, change)


def discard(location: Path | str) -> None:
    """Remove a ledger (a file or an object) if it is there."""
    if not is_url(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = filesystem(str(location), fresh=True)
    with store_errors(str(location)):
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


class SharedObject:
    """A JSON object at ``url`` updated by compare-and-swap (see the module docstring); its
    filesystem is connected on first use (so it pickles as its URL) and kept.

    >>> SharedObject("s3://bucket/ds/_cache/budget/r1.json").update(parse_counts, take_one)  # doctest: +SKIP
    True
    """

    def __init__(self, url: str):
        self.url = url
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "_fs": None}

    def _connect(self) -> tuple[Any, str]:
        if self._fs is None:
            self._fs, self._path = _conditional_fs(self.url)
        return self._fs, self._path

    def update(self, parse: Callable[[bytes], dict[str, Any]], change: Callable[[dict[str, Any]], Result]) -> Result:
        """``change`` applied to the state in the object (``parse`` of its bytes; empty when
        there is none), written back by a conditional PUT when it changed; ``change``'s result.
        ``change`` may run more than once (each lost race runs it on the newer state): it must
        only change the state it is given. ``StgrError`` naming the URL when the store refuses,
        or when every try lost to another writer."""
        write_id = uuid.uuid4().hex[:16]
        written: list[Result] = []  # the result of the write whose outcome is not known yet
        with store_errors(self.url):
            fs, path = self._connect()
            for attempt in range(TRIES):
                etag, data = _read(fs, path)
                if written and write_id in _writes(data):
                    return written[0]  # our PUT landed; its reply was lost
                state = parse(data)
                state.pop(WRITES_KEY, None)
                before = json.dumps(state)
                result = change(state)
                if json.dumps(state) == before:
                    return result
                body = json.dumps({**state, WRITES_KEY: [*_writes(data), write_id][-KEPT_WRITES:]}).encode()
                written = [result]
                try:
                    _put(fs, path, body, etag)
                    return result
                except OSError as exc:
                    if not _lost_race(exc):
                        raise
                time.sleep(random.uniform(0, min(BACKOFF * 2**attempt, MAX_BACKOFF)))
        raise StgrError(
            f"{self.url}: {TRIES} conditional writes in a row lost to other writers; too many processes "
            f"update it at once (fewer workers, or a larger annotator.concurrency per worker)"
        )


def check_shared_ledger(url: str) -> None:
    """``StgrError`` unless a ledger under ``url`` can be shared by conditional writes (S3).

    >>> check_shared_ledger("gs://bucket/ds")  # doctest: +SKIP
    StgrError: gs://bucket/ds: a run's LLM budget shared by workers on gs:// is not supported yet ...
    """
    _conditional_fs(url)


def _conditional_fs(url: str) -> tuple[Any, str]:
    """The filesystem of ``url`` when it has conditional writes this module uses (S3's), else
    ``StgrError``.

    Why not fall back to a plain read-modify-write elsewhere: the last writer would win and
    the workers spending at once would pass the cap, silently, with the user's money. GCS
    (``if_generation_match``) and Azure (``If-Match`` on an ETag) can do the same; they are not
    written yet because no test here has their stores."""
    fs, path = filesystem(url, fresh=True)
    if "s3" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        raise StgrError(
            f"{url}: a run's LLM budget shared by workers on {url.split('://')[0]}:// is not supported yet "
            f"(only s3://): use the thread runner (sharding.runner: thread), or no annotator.budget"
        )
    return fs, path


def _read(fs: Any, path: str) -> tuple[str | None, bytes]:
    """(ETag, bytes) of the object; (None, b"") when there is none.

    The ETag is asked first (``info``, a HEAD), then the bytes (a GET). If the object changed in
    between, the bytes are newer than the ETag, and the PUT conditioned on that ETag fails with
    412 as long as the ETag never comes back, the ABA case; it cannot: every write holds a new
    write id (``WRITES_KEY``), so no two writes have the same bytes, hence the same ETag (that
    of a single PUT is the MD5 of its bytes); the counts only grow besides, and an unchanged
    state is never written. s3fs (2026.2): ``info(refresh=True)`` is a ``head_object``
    that bypasses its listing cache, and ``cat_file`` always sends a ``get_object``."""
    try:
        etag = str(fs.info(path, refresh=True)["ETag"])
        return etag, fs.cat_file(path)
    except FileNotFoundError:  # none yet, or removed between the two: a create
        return None, b""


def _put(fs: Any, path: str, body: bytes, etag: str | None) -> None:
    """The conditional PUT. s3fs hands ``pipe_file``'s extra arguments to ``put_object``
    (``IfMatch``); ``mode="create"`` sends ``If-None-Match: *``. A body this small is one PUT."""
    if etag is None:
        fs.pipe_file(path, body, mode="create")
    else:
        fs.pipe_file(path, body, IfMatch=etag)


def _lost_race(exc: OSError) -> bool:
    """Whether a PUT failed because another writer's came first: 412 (s3fs raises
    ``FileExistsError`` for a failed ``If-None-Match``, ``OSError(EINVAL)`` for ``If-Match``), or
    S3's 409 ``ConditionalRequestConflict`` (two conditional writes of one key at once)."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _writes(data: bytes) -> list[str]:
    """The ids of the last writes recorded in an object's bytes."""
    try:
        stored = json.loads(data or b"{}")
    except ValueError:
        return []
    writes = stored.get(WRITES_KEY) if isinstance(stored, dict) else None
    return [w for w in writes if isinstance(w, str)] if isinstance(writes, list) else []
