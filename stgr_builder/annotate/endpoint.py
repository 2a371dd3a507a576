"""Fail fast on an endpoint that has never answered.

A mistyped ``OPENAI_BASE_URL``, a server that is down or hangs: every request fails after the
client's retries, and the slow-start gate of ``ratelimit.py`` (one request at a time until a
first reply says what the limits are) lets one out every few seconds. With ``timeout: 5``, 24
samples took 394 s to end pending; at the defaults, 1,000 samples would have taken hours.

An ``EndpointWatch`` (one per process and endpoint, kept in ``Resources`` beside the session)
notes when the first request was sent and whether any reply (of any status) ever came. While
none has, a request that ends in a connection failure or a timeout ``annotator.dead_endpoint_s``
or more after the first was sent declares the endpoint dead: every batch under ``guard`` is
cancelled at once and the build stops with one line naming the base URL (never the key). Its
samples stay pending (nothing is written for them); the next run asks again. Once the endpoint
has answered, failures are retried patiently as before (the sample is left pending).

>>> watch = EndpointWatch("http://127.0.0.1:9/v1", bound_s=60)   # doctest: +SKIP
>>> results = await watch.guard(asyncio.gather(*requests))        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from stgr_builder.errors import EndpointDead

T = TypeVar("T")

#: The openai client's endpoint when OPENAI_BASE_URL is not set.
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def shown_url(base_url: str | None) -> str:
    """The base URL as it may be printed: without a user or password in it.

    >>> shown_url("https://user:secret@llm.example/v1"), shown_url(None)
    ('https://llm.example/v1', 'https://api.openai.com/v1')
    """
    parts = urlsplit(base_url or DEFAULT_BASE_URL)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class EndpointWatch:
    """Whether an endpoint has ever answered, and since when this process has been asking."""

    def __init__(self, base_url: str | None, bound_s: float, clock: Callable[[], float] = time.monotonic):
        self.url = shown_url(base_url)
        self.bound_s = bound_s
        self.clock = clock
        self.first_sent: float | None = None
        self.has_answered = False
        self.failures = 0
        self.dead: str | None = None  # the line to stop with, once declared dead
        self._lock = threading.Lock()
        self._events: list[asyncio.Event] = []

    def sending(self) -> None:
        """A request is about to be sent (the first one starts the clock)."""
        if self.dead is not None:
            raise EndpointDead(self.dead)
        with self._lock:
            if self.first_sent is None:
                self.first_sent = self.clock()

    def answered(self) -> None:
        """A reply came (any HTTP status): from now on, failures are retried patiently."""
        self.has_answered = True

    def failed(self, what: str) -> None:
        """A request ended in a connection failure or a timeout (``what``, after the client's
        retries). Declares the endpoint dead when it never answered for ``bound_s``."""
        with self._lock:
            if self.has_answered or self.dead is not None:
                return
            self.failures += 1
            waited = self.clock() - (self.first_sent if self.first_sent is not None else self.clock())
            if waited < self.bound_s:
                return
            self.dead = (
                f"the LLM endpoint {self.url} has not answered any request in {waited:.0f} s "
                f"({self.failures} failed: {what}): check OPENAI_BASE_URL and that the server is up "
                f"(annotator.dead_endpoint_s: {self.bound_s:g}); samples not annotated stay pending, "
                f"run again to resume"
            )
            events = list(self._events)
        for event in events:
            event.set()  # called on the session's event loop: every guard wakes up

    async def guard(self, work: Awaitable[T]) -> T:
        """``work``'s result; cancelled, raising ``EndpointDead``, once the endpoint is declared dead."""
        task = asyncio.ensure_future(work)
        event = asyncio.Event()
        with self._lock:
            self._events.append(event)
            dead = self.dead
        if dead is not None:
            event.set()
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            with self._lock:
                self._events.remove(event)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # let the requests close
        raise EndpointDead(self.dead or "the LLM endpoint is not answering")


__all__ = ["DEFAULT_BASE_URL", "EndpointDead", "EndpointWatch", "shown_url"]
