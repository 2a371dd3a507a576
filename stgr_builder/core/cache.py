"""The one bounded cache: a thread-safe LRU bounded in bytes (and, as a backstop, in entries).

Every in-memory memo of the pipeline (detections per frame, decoded frames per video, probe
results, drawn frames for LLM requests) is one of these, owned by the process's
``Resources``, so memory stays bounded however many samples a worker sees.

>>> memo = BoundedCache(max_bytes=100, weigh=len)
>>> memo.put("a", "x" * 60); memo.put("b", "y" * 60)   # "a" is evicted: 120 > 100 bytes
>>> memo.get("a") is None, memo.get("b") == "y" * 60, memo.bytes
(True, True, 60)
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def approx_size(value: Any) -> int:
    """A rough byte size of a value: strings and bytes by length, containers and pydantic
    models by their parts (good enough to bound a memo; no exact accounting is attempted)."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 49
    if isinstance(value, (list, tuple, set, frozenset)):
        return 56 + 8 * len(value) + sum(approx_size(item) for item in value)
    if isinstance(value, dict):
        return 64 + sum(approx_size(k) + approx_size(v) for k, v in value.items())
    fields = getattr(value, "__pydantic_fields__", None)
    if fields is not None:
        return 64 + sum(approx_size(getattr(value, name)) for name in fields)
    nbytes = getattr(value, "nbytes", None)  # numpy arrays
    if isinstance(nbytes, int):
        return nbytes + 112
    return sys.getsizeof(value)


class BoundedCache(Generic[V]):
    """Least-recently-used entries go first once ``max_bytes`` (sum of ``weigh(value)``) or
    ``max_entries`` is passed. An entry heavier than ``max_bytes`` is not kept."""

    def __init__(self, max_bytes: int, *, max_entries: int | None = None, weigh: Callable[[V], int] = approx_size):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.weigh = weigh
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: Hashable, value: V) -> None:
        size = self.weigh(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self.bytes += size
            while self._items and (
                self.bytes > self.max_bytes or (self.max_entries is not None and len(self._items) > self.max_entries)
            ):
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value, or ``make()`` stored and returned (two threads may both make it)."""
        found = self.get(key)
        if found is None:
            found = make()
            self.put(key, found)
        return found

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
