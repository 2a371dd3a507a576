"""Per-process resources, handed explicitly to the steps that need them.

A worker (the build's process with the thread runner, each Dask worker process, a test) holds
one ``Resources``: the models it loaded, each with the one lock that serializes calls into it;
its memos, each bounded in bytes; and the LLM budget of each run. Steps receive it when they are
built; nothing of it lives in a module global.

>>> resources = Resources()
>>> loaded = resources.model(("ultralytics", "w.pt", "cpu"), lambda: load("w.pt"))  # doctest: +SKIP
>>> with loaded.lock:                                                               # doctest: +SKIP
...     loaded.model.predict(frames)
>>> memo = resources.memo("detect", max_bytes=64 << 20)

Lifetime: the flow makes one per build and hands it to every shard task. With the thread
runner the tasks share that object. A Dask or Ray worker cannot share memory with the client,
so a pickled ``Resources`` comes back, in each worker process, as that worker's own instance for
the same build (kept on the ``distributed.Worker`` object, or on Ray's worker object): models
load once per worker, not once per task.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stgr_builder.core.cache import BoundedCache, approx_size
from stgr_builder.core.hashing import media_fingerprint
from stgr_builder.core.ledger import update_json
from stgr_builder.errors import warn
from stgr_builder.storage.ledger import SharedObject
from stgr_builder.storage.location import is_url
from stgr_builder.storage.media import cached_stat, remote_fingerprint

if TYPE_CHECKING:  # distributed loads only where Dask runs
    from distributed import Worker

#: Default byte bound of each memo a step asks for without naming one.
DEFAULT_MEMO_BYTES = 64 << 20


@dataclass
class LoadedModel:
    """A model loaded once per process, and the lock every caller holds while using it
    (predictors keep per-call state; tokenizers are not thread-safe)."""

    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class Budget:
    """New (uncached) LLM requests and their tokens in one run, against the config's caps.

    Thread-safe: the shard tasks of a run share one. With a ``ledger`` the counts live there,
    so every process of the run (each Dask worker) draws from one budget: a file updated under
    an exclusive ``flock``, or an object in a bucket (a URL) updated by conditional writes
    (``storage/ledger.py``), for workers that share nothing but the bucket. A request is counted
    when it is sent, so at most ``max_requests`` are ever sent; its tokens when its reply comes,
    so requests in flight may pass a token cap.

    >>> budget = Budget(10, None, ledger=Path("out/_cache/budget/<run>.json"))  # doctest: +SKIP
    >>> budget.acquire()                                                        # doctest: +SKIP
    True
    """

    def __init__(self, max_requests: int | None, max_tokens: int | None, ledger: Path | str | None = None):
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self.reached = False
        capped = max_requests is not None or max_tokens is not None
        self.ledger: Path | str | None = None
        self._shared: SharedObject | None = None  # the ledger in a bucket, connected once
        if ledger is not None and capped:
            self.ledger = str(ledger) if is_url(ledger) else Path(ledger)
            self._shared = SharedObject(str(ledger)) if is_url(ledger) else None
        self._lock = threading.Lock()

    def _update(self, change: Callable[[dict[str, int]], bool]) -> bool:
        """Apply ``change`` to the counts (the ledger's, under its lock) and keep them."""
        with self._lock:
            counts = {"requests": self.requests, "tokens": self.tokens}
            if self.ledger is None:
                result = change(counts)
            else:
                ledger = self.ledger

                def counted(stored: dict[str, Any]) -> bool:
                    outcome = change(stored)
                    counts.update(stored)
                    return outcome

                def parse(data: bytes) -> dict[str, Any]:
                    return _ledger_counts(data, ledger)

                if self._shared is not None:
                    result = self._shared.update(parse, counted)
                else:
                    result = update_json(Path(ledger), parse, counted)
            self.requests, self.tokens = counts["requests"], counts["tokens"]
            return result

    def acquire(self) -> bool:
        """Count one new request, or return False (for good) once a cap is reached."""
        if self.reached:
            return False

        def take(counts: dict[str, int]) -> bool:
            if (self.max_requests is not None and counts["requests"] >= self.max_requests) or (
                self.max_tokens is not None and counts["tokens"] >= self.max_tokens
            ):
                return False
            counts["requests"] += 1
            return True

        if not self._update(take):
            self.reached = True
            return False
        return True

    def add_tokens(self, count: int) -> None:
        def add(counts: dict[str, int]) -> bool:
            counts["tokens"] += count
            return True

        self._update(add)


class Resources:
    """What one worker process holds for the steps of one build (see the module docstring).

    ``token`` names the build run; ``memo_bytes`` bounds each memo asked for without a bound.
    """

    __slots__ = ("token", "memo_bytes", "_lock", "_models", "_memos", "_budgets")

    def __init__(self, token: str | None = None, memo_bytes: int = DEFAULT_MEMO_BYTES):
        self.token = token or uuid.uuid4().hex
        self.memo_bytes = memo_bytes
        self._lock = threading.Lock()
        self._models: dict[Hashable, LoadedModel] = {}
        self._memos: dict[str, BoundedCache[Any]] = {}
        self._budgets: dict[str, Budget] = {}

    def model(self, key: Hashable, load: Callable[[], Any]) -> LoadedModel:
        """The model loaded under ``key`` (``load()`` runs once per process, under a lock)."""
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = self._models[key] = LoadedModel(load())
            return loaded

    def memo(
        self, name: str, max_bytes: int | None = None, weigh: Callable[[Any], int] = approx_size
    ) -> BoundedCache[Any]:
        """The process's memo called ``name``, bounded to ``max_bytes`` (made on first use)."""
        with self._lock:
            memo = self._memos.get(name)
            if memo is None:
                memo = self._memos[name] = BoundedCache(max_bytes or self.memo_bytes, weigh=weigh)
            return memo

    def budget(
        self, run: str, max_requests: int | None, max_tokens: int | None, ledger: Path | str | None = None
    ) -> Budget:
        """The LLM budget of run ``run`` (made on first use with these caps); with ``ledger``,
        counted in that file (or object, a URL), shared by every process of the run."""
        with self._lock:
            budget = self._budgets.get(run)
            if budget is None:
                budget = self._budgets[run] = Budget(max_requests, max_tokens, ledger)
            return budget

    def media_fingerprint(self, path: Path | str, local_copy: Path | None = None) -> str:
        """``core.hashing.media_fingerprint`` of a media file, remembered in this process (a
        file rewritten in place gets a new ctime, so it is read again); of an object in a bucket
        (a URL), the same value from range reads or from ``local_copy``, its copy in the local
        cache (``storage.media``). Raises ``OSError``."""
        memo = self.memo("media-fingerprints", 4 << 20)
        if is_url(path):
            return remote_fingerprint(str(path), memo, local_copy)
        return media_fingerprint(Path(path), memo)

    def remote_stat(self, url: str) -> tuple[int, str]:
        """(size, version) of an object in a bucket, asked at most every few minutes by this
        process (``storage.media.cached_stat``). Raises ``OSError``."""
        return cached_stat(url, self.memo("media-fingerprints", 4 << 20))

    def memo_bytes_used(self) -> dict[str, int]:
        """Bytes held by each memo (benchmarks and tests)."""
        with self._lock:
            return {name: memo.bytes for name, memo in self._memos.items()}

    def __reduce__(self) -> tuple[Callable[[str, int], Resources], tuple[str, int]]:
        # Pickled for a Dask worker: rebuilt there as that worker's instance for this token.
        return (worker_resources, (self.token, self.memo_bytes))

    def __repr__(self) -> str:
        return f"Resources(token={self.token[:8]}, models={len(self._models)}, memos={len(self._memos)})"


def worker_resources(token: str, memo_bytes: int = DEFAULT_MEMO_BYTES) -> Resources:
    """The ``Resources`` of build ``token`` in this Dask or Ray worker process (made on first
    use, kept on the worker object), or a new one outside a worker."""
    worker = _this_worker() or _this_ray_worker()
    if worker is None:
        return Resources(token, memo_bytes)
    with _ATTACH_LOCK:
        held: dict[str, Resources] = worker.__dict__.setdefault("_stgr_resources", {})
        if token not in held:
            held[token] = Resources(token, memo_bytes)
        return held[token]


def _this_worker() -> Worker | None:
    """The ``distributed.Worker`` of this process, if any. Arguments may be unpickled outside
    a task's thread, where ``get_worker`` does not answer; a process of a LocalCluster or of
    ``dask worker`` then holds exactly one Worker."""
    try:
        from distributed import Worker, get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        workers = list(Worker._instances)
        return workers[0] if len(workers) == 1 else None


def _this_ray_worker() -> Any:
    """The Ray worker object of this process when it is a Ray worker (not the driver), else
    None. Ray reuses its worker processes for many tasks, as Dask does."""
    ray = sys.modules.get("ray")  # never imported here: only a process that runs Ray has it
    if ray is None or not ray.is_initialized():
        return None
    worker = getattr(ray.get_runtime_context(), "worker", None)
    return worker if getattr(worker, "mode", None) == ray.WORKER_MODE else None


_ATTACH_LOCK = threading.Lock()  # guards the Worker attribute above; holds no state itself


def _ledger_counts(data: bytes, path: Path | str) -> dict[str, int]:
    """A budget ledger's counts; one that is not ``{"requests": N, "tokens": N}`` (damaged, a
    hand edit) is named in a warning and counts from zero (the run may spend its budget again)."""
    try:
        stored = json.loads(data or b"{}")
    except ValueError:
        stored = None
    counts = {"requests": 0, "tokens": 0, **stored} if isinstance(stored, dict) else None
    if counts is None or any(
        not isinstance(counts[k], int) or isinstance(counts[k], bool) or counts[k] < 0 for k in ("requests", "tokens")
    ):
        warn(f"{path}: not a budget ledger ({data[:60]!r}); ignored, this run's budget counts from zero")
        return {"requests": 0, "tokens": 0}
    return counts
