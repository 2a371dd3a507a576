"""One event loop and one ``AsyncOpenAI`` client per process and endpoint, kept between batches.

Each ``annotate_batch`` used to start an event loop and a client of its own, and close both at
its end: every batch paid the client's set-up (its TLS context, its platform probe, one new
connection per request in flight) and the first requests of every batch waited for it. With
the default shards of 64 samples, two rounds of requests at 32 in flight, that was a few percent
of the annotate step. A session runs its loop in a daemon thread; ``run`` hands it a coroutine
from any thread (the shard tasks' threads) and waits for the result. The annotators of a build
share it through ``Resources``, so their requests share one connection pool.

>>> session = LlmSession(lambda: AsyncOpenAI())                     # doctest: +SKIP
>>> session.run(lambda client: client.models.list())               # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LlmSession:
    """A long-lived event loop (in a daemon thread) and the client made in it on first use; both
    last as long as the process (a kept client is the point)."""

    def __init__(self, make_client: Callable[[], Any]):
        self._make_client = make_client
        self._client: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="stgr-llm-loop")
        self._thread.start()

    def run(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """``work(client)`` run to completion on the session's loop; its result or its exception."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LlmSession.run called from its own event loop: it would wait for itself")

        async def with_client() -> T:
            if self._client is None:
                self._client = self._make_client()
            return await work(self._client)

        return asyncio.run_coroutine_threadsafe(with_client(), self._loop).result()


__all__ = ["LlmSession"]
