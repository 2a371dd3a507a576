"""``stgr serve-llm``: a local OpenAI-compatible server for dry runs and tests.

It answers ``POST /v1/chat/completions`` (text and ``data:`` image parts, ``response_format``
json_schema) and ``GET /v1/models`` with a deterministic policy that reads the prompt — no
model behind it:

- the annotation prompt (schema ``stgr_cot_reply``): for each object to ground, the candidate
  box with that label and the best score, plus the best one on one more frame; a reasoning that
  cites them (and ``[SPAN]`` when the prompt asks for it);
- the judge's prompt (schema ``crop_verdicts``, numbered crops each after its question "Is this a
  {object}?"): "yes" for a crop when the shipped demo detector finds that object on its pixels
  (``judge.py``; and the name is not in ``crop_deny``), else "no". The prompt's words other than
  the name are not read.
- the event judge's prompt (schema ``event_verdict``, "Is this happening here: <event>?" and a
  frame): "yes" when the demo detector finds the object the event names on the frame
  (``events.py``).

``policy="noisy"`` (``noisy.py``) makes the mistakes of a real VLM at seeded rates per kind:
fenced or prose-wrapped JSON, wrong-object boxes, times in prose, off-span key frames, a
contradicting MCQ conclusion, ``finish_reason: length``, and a 400 on ``json_schema``.

Faults are injected at ``fault_rate``, evenly spaced, kinds in turn: ``429`` (with ``Retry-After`` and
``retry-after-ms``), ``500``, ``timeout`` (the reply comes after ``hang_s``, past the client's
timeout), ``malformed`` (content that is not JSON), ``schema`` (JSON that breaks the schema or
cites an unknown box), and faults of the reply itself, as a proxy or gateway makes them:
``truncated`` (a 200 whose JSON body is cut short), ``dropped`` (the connection closes halfway
through the body), ``html`` (a 200 with an HTML error page), ``huge`` (a 200 of 5 MB), ``hang``
(no answer at all; the connection closes after ``hang_s``). ``GET /stats`` counts requests, per
outcome and per request key.

With ``rpm`` / ``tpm`` the server limits requests and tokens per minute as a provider does (a
bucket holding one second's worth, refilled continuously; tokens are the prompt's, counted as in
``usage``, plus ``max_tokens``): past them it answers 429 with ``Retry-After`` / ``retry-after-ms``
(outcome ``rate_limited``), and every chat reply carries ``x-ratelimit-limit-requests``,
``-remaining-requests``, ``-reset-requests`` (and ``-tokens``).

The OpenAI Batch API, for batch-mode dry runs: ``POST /v1/files`` (multipart upload, purpose
``batch``), ``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches`` (an uploaded JSONL of
``/v1/chat/completions`` requests; ``metadata`` kept), ``GET /v1/batches/{id}``, ``GET /v1/batches``,
``POST /v1/batches/{id}/cancel``. A batch is answered line by line with the same policy (and the
same injected faults: a refused or failed line is an error line) in a background thread, after
``batch_delay_s``; its output file holds the lines answered 200, its error file the others.
``/stats`` counts batches, files and batch lines apart from the online requests.

>>> with serve_llm(latency_ms=0) as server:                     # doctest: +SKIP
...     client = OpenAI(base_url=server.base_url, api_key="x")
...     server.stats()["total"]
0

The modules: ``policy`` (what a request is answered with), ``handler`` (HTTP: routing, metering,
injected faults), ``batches`` (the Batch API), ``traffic`` (limits and counts), ``options``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from stgr_builder.dryrun.handler import HttpServer
from stgr_builder.dryrun.options import FAULT_KINDS, ServerOptions
from stgr_builder.dryrun.policy import JUDGE
from stgr_builder.dryrun.traffic import Stats

__all__ = ["FAULT_KINDS", "DryRunServer", "ServerOptions", "serve_llm"]


class DryRunServer:
    """The server in a background thread: ``base_url`` for ``OPENAI_BASE_URL``, ``stats()``.

    >>> server = DryRunServer(port=0).start()       # doctest: +SKIP
    >>> server.base_url                              # doctest: +SKIP
    'http://127.0.0.1:54321/v1'
    >>> server.stop()                                # doctest: +SKIP
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any):
        self.options = ServerOptions(**options)
        if self.options.policy not in ("oracle", "noisy"):
            raise ValueError(f"unknown policy {self.options.policy!r}: oracle or noisy")
        unknown = set(self.options.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: choose from {', '.join(FAULT_KINDS)}")
        self._server = HttpServer((host, port), self.options)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> DryRunServer:
        JUDGE.warm()  # the judge's detector, before the first request can wait for it
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="stgr-serve-llm"
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        JUDGE.warm()
        self._server.serve_forever(poll_interval=0.2)

    def stats(self) -> dict[str, Any]:
        """Requests so far: ``total``, ``by_outcome`` (ok, 429, ...), ``by_schema``, ``by_key``
        (request-cache key -> count), ``ok_keys`` (keys answered with a usable reply),
        ``max_in_flight``."""
        return self._server.stats_snapshot()

    def reset_stats(self) -> None:
        self._server.stats = Stats()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DryRunServer:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serve_llm(**options: Any) -> Iterator[DryRunServer]:
    """Run the dry-run server on 127.0.0.1 (a free port) for the ``with`` block.

    >>> with serve_llm(latency_ms=50, fault_rate=0.2, seed=1) as server:   # doctest: +SKIP
    ...     os.environ["OPENAI_BASE_URL"] = server.base_url
    """
    server = DryRunServer(**options).start()
    try:
        yield server
    finally:
        server.stop()
