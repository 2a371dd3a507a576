"""The HTTP wire of the LLM annotator: one chat completion through the request cache, the
run's budget and the ``openai`` client (retries, timeouts), a reply read bounded, each failure
mapped to its outcome (``sample_error``: pending, rejected, or a user error), and the re-ask
loop that sends a rejected reply back with its error."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from stgr_builder.annotate.cache import CachedUsage, CacheEntry, request_key
from stgr_builder.annotate.endpoint import EndpointWatch
from stgr_builder.annotate.formats import FORMAT_MODES, FormatMemory, refuses_format, request_body
from stgr_builder.annotate.ratelimit import RateLimiter
from stgr_builder.annotate.reply import short_error
from stgr_builder.annotate.request import count_images, json_body, schema_hash
from stgr_builder.annotate.usage import SAMPLE_USAGE, count_event
from stgr_builder.errors import (
    BadReply,
    BudgetReached,
    LlmError,
    LlmUnavailable,
    ReplyRejected,
    ReplyTooLarge,
    RequestDeferred,
    SampleError,
    StgrError,
    TooLarge,
)
from stgr_builder.models import AnnotatorConfig, LlmUsage, RejectCode


class AskerOwner(Protocol):
    """What an ``Asker`` takes from its annotator (``llm.LlmAnnotator``)."""

    config: AnnotatorConfig
    model: str
    cache: Any
    budget: Any
    usage: LlmUsage
    formats: FormatMemory
    _sampling: dict[str, Any]
    endpoint: EndpointWatch


#: Header carrying the request-cache key (not a secret: a hash of the request), so a server's
#: logs can tell a repeated request from a new one.
KEY_HEADER = "X-Stgr-Request-Key"

T = TypeVar("T")

try:  # the HTTP library of the openai client (httpx2 in openai 3.x, httpx before)
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]


#: The largest reply body read (a chat completion of a few KB; a gateway's error page or a
#: runaway generation is not read whole, and never cached).
MAX_REPLY_BYTES = 1 << 20


def async_client(config: AnnotatorConfig, limiter: RateLimiter, base_url: str | None, api_key: str | None):
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=config.max_retries,
        timeout=config.timeout,
        http_client=limiter.http_client(config.max_tokens),
    )


#: Stands for an image's data URL while the rest of a request body is serialized (``json_body``).


#: What asking the LLM can fail with, each mapped to the sample's outcome by ``sample_error``.
REQUEST_FAILURES = (LlmUnavailable, ReplyTooLarge, LlmError, ReplyRejected)


def sample_error(err: Exception, during: str = "") -> SampleError:
    """The outcome of a sample whose request failed with ``err`` (one of ``REQUEST_FAILURES``):
    pending (transient: the next run finishes it) or a reject code. ``during`` names the step
    (e.g. the judge) in the message."""
    if isinstance(err, LlmUnavailable):
        return SampleError(RejectCode.PENDING, f"{err} ({during})" if during else str(err))
    final: dict[type[Exception], RejectCode] = {
        ReplyTooLarge: RejectCode.LLM_REPLY_TOO_LARGE,
        LlmError: RejectCode.LLM_ERROR,
    }
    code = err.code if isinstance(err, ReplyRejected) else final[type(err)]
    return SampleError(code, f"{during}: {err}" if during else str(err))


def final_status(status: int) -> bool:
    """Whether an HTTP error status is final (the request itself is refused: asking again changes
    nothing), rather than transient (408, 409, 429, 5xx: retried, then the sample is pending)."""
    return 400 <= status < 500 and status not in (408, 409, 429)


def _reasked(messages: list[dict], text: str, reask: str) -> list[dict]:
    """The messages with the unusable reply and the re-ask that says what was wrong."""
    return [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": reask}]


def raised_max_tokens(max_tokens: int | None) -> int:
    """``max_tokens`` once a reply was cut by it: twice as many (4096 when the endpoint's own cap
    cut it)."""
    return 4096 if max_tokens is None else min(1_000_000, 2 * max_tokens)


class Asker:
    """Requests of one batch: cache, budget, semaphore, usage and the re-ask loop."""

    def __init__(
        self,
        client,
        semaphore: asyncio.Semaphore,
        annotator: AskerOwner,
        *,
        model_name: str | None = None,
        formats: FormatMemory | None = None,
        judge: bool = False,
    ):
        self.client = client
        self.semaphore = semaphore
        self.cache = annotator.cache
        self.budget = annotator.budget
        self.annotator = annotator
        # The judge asks its own model (and maybe endpoint) through the same cache and budget.
        self.model_name = model_name or annotator.model
        self.formats = formats or annotator.formats
        self.judge = judge
        # Batch mode: requests the cache lacks are recorded here (key -> (body, images)) and
        # raise ``RequestDeferred``, to be sent as a batch; None: sent online.
        self.deferred: dict[str, tuple[dict[str, Any], int]] | None = None
        # Requests being sent, by cache key: an identical one waits for that reply.
        self.in_flight: dict[str, asyncio.Future[CacheEntry]] = {}

    def count(self, event: str) -> None:
        """One more ``event`` of the annotation checks, in the annotator's and the sample's usage."""
        count_event(event)

    async def valid(
        self,
        messages: list[dict],
        prompt_version: str,
        model: type[BaseModel],
        name: str,
        parse: Callable[[str], T],
        reask: str,
        digests: Mapping[str, str] | None = None,
    ) -> T:
        """Ask until ``parse`` accepts a reply (at most 1 + max_invalid_retries requests); what
        ``parse`` returns. A rejected reply is sent back with the error, so the model can fix it;
        a reply cut short (``finish_reason`` other than ``stop``) is unusable: asked again, with
        ``max_tokens`` raised once when the cause was its length. A ``ReplyError`` of a semantic
        check is counted (``<check>.caught``, ``<check>.fixed``) and, when no re-ask fixes it,
        gives the sample that check's reject code."""
        config = self.annotator.config
        error, code, caught = "", RejectCode.LLM_INVALID_REPLY, None
        max_tokens, raised = config.max_tokens, False
        for _ in range(config.max_invalid_retries + 1):
            entry = await self.request(messages, prompt_version, model, name, digests, max_tokens=max_tokens)
            text = entry.content or ""
            finish = entry.finish_reason
            if finish not in (None, "stop"):
                error, code = f"the reply was cut short (finish_reason: {finish})", RejectCode.LLM_INVALID_REPLY
                self.count(f"finish_{finish}.caught")
                if finish == "length" and not raised:
                    max_tokens, raised = raised_max_tokens(max_tokens), True
                    continue  # the same request, room to finish
                messages = _reasked(messages, text, reask.format(error=error))
                continue
            try:
                parsed = parse(text)
            except ValueError as exc:
                error = short_error(exc)
                check = getattr(exc, "check", None)
                code = getattr(exc, "code", RejectCode.LLM_INVALID_REPLY)
                if check is not None:
                    self.count(f"{check}.caught")
                    caught = check
                messages = _reasked(messages, text, reask.format(error=error))
                continue
            if caught is not None:
                self.count(f"{caught}.fixed")
            return parsed
        raise ReplyRejected(f"{config.max_invalid_retries + 1} replies could not be used; last: {error}", code)

    async def request(
        self,
        messages: list[dict],
        prompt_version: str,
        model: type[BaseModel],
        name: str,
        digests: Mapping[str, str] | None = None,
        *,
        max_tokens: int | None = None,
    ) -> CacheEntry:
        """One chat completion (its content and finish reason): from the cache, or sent (budget
        permitting) and cached. ``max_tokens`` other than the config's is part of the key."""
        annotator = self.annotator
        sampling = annotator._sampling
        if max_tokens != annotator.config.max_tokens:
            sampling = {**sampling, "max_tokens": max_tokens}
        key = request_key(
            model=self.model_name,
            prompt_version=prompt_version,
            messages=messages,
            schema_hash=schema_hash(model),
            sampling=sampling,
            digests=digests,
        )
        entry = self.cache.get(key)
        if entry is not None and entry.kind == "error" and TRANSIENT_ERROR.match(entry.error or ""):
            entry = None  # a transient failure cached by an earlier version: ask again
        cached = entry is not None
        if not cached and self.deferred is not None:
            config = annotator.config
            body = request_body(
                self.model_name, messages, model, name, config.temperature, max_tokens, self.formats.mode
            )
            self.deferred[key] = (body, count_images(messages))
            raise RequestDeferred(key)
        if not cached and key in self.in_flight:
            # The same request of another sample (the judge's crops of a shared box) is under
            # way: its reply, not a second payment.
            entry, cached = await asyncio.shield(self.in_flight[key]), True
        if not cached:
            self.in_flight[key] = sent = asyncio.get_running_loop().create_future()
            sent.add_done_callback(lambda done: done.cancelled() or done.exception())  # read: no warning
            try:
                entry = await self._paid(key, messages, model, name, max_tokens)
                sent.set_result(entry)
            except BaseException as exc:
                sent.set_exception(exc)
                raise
            finally:
                del self.in_flight[key]
        assert entry is not None
        used = LlmUsage(
            requests=1,
            cached=int(cached),
            failed=int(entry.kind == "error"),
            prompt_tokens=entry.usage.prompt_tokens,
            completion_tokens=entry.usage.completion_tokens,
            images=entry.images,
            judge_requests=int(self.judge),
        )
        for usage in (annotator.usage, SAMPLE_USAGE.get(None)):
            if usage is not None:
                usage.add(used)
        if entry.kind == "error":
            raise LlmError(entry.error or "request failed")
        return entry

    async def _paid(
        self, key: str, messages: list[dict], model: type[BaseModel], name: str, max_tokens: int | None
    ) -> CacheEntry:
        """One request sent (budget permitting), its reply cached before it is used."""
        # In a thread: with workers that share only the bucket, the ledger is a few round trips
        # to the store (``storage/ledger.py``), which must not stall the session's other requests.
        if not await asyncio.to_thread(self.budget.acquire):
            raise BudgetReached()
        entry = await self._send(key, messages, model, name, max_tokens)
        await asyncio.to_thread(self.budget.add_tokens, entry.usage.prompt_tokens + entry.usage.completion_tokens)
        await asyncio.to_thread(self.cache.put, key, entry)  # before the reply is used
        return entry

    async def _send(
        self, key: str, messages: list[dict], model: type[BaseModel], name: str, max_tokens: int | None
    ) -> CacheEntry:
        """One request: the reply, or a final error that no retry can change (both cached by the
        caller). Raises ``LlmUnavailable`` for a transient failure after the retries (never
        cached: the sample stays pending) and ``ReplyTooLarge``.

        The client retries 429 (Retry-After), 5xx, timeouts and connection errors; a 200 reply
        that cannot be read (cut short, not JSON, HTML, a dropped connection mid-body, over
        ``MAX_REPLY_BYTES``) is retried here, ``max_retries`` times with exponential backoff."""
        import openai

        config = self.annotator.config
        formats = self.formats
        images = count_images(messages)
        problem = ""
        too_large = 0
        endpoint = self.annotator.endpoint
        endpoint.sending()
        for attempt in range(config.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
            try:
                async with self.semaphore, formats.probing():
                    # The format is read when the request goes out: one refused before it moved on.
                    mode = formats.mode
                    body = request_body(self.model_name, messages, model, name, config.temperature, max_tokens, mode)
                    data = await self._post(key, body)
                    formats.confirm(mode)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise StgrError(
                    f"the LLM endpoint refused the API key (HTTP {exc.status_code}): "
                    f"check OPENAI_API_KEY and OPENAI_BASE_URL"
                ) from None
            except openai.NotFoundError:
                raise StgrError(
                    f"the LLM endpoint does not know model {self.model_name!r} (HTTP 404): "
                    f"check annotator.model and OPENAI_BASE_URL"
                ) from None
            except openai.APITimeoutError:
                endpoint.failed(f"no reply within {config.timeout:g}s")
                raise LlmUnavailable(
                    "timeout", f"no reply within {config.timeout:g}s ({config.max_retries} retries)"
                ) from None
            except openai.APIStatusError as exc:
                endpoint.answered()
                detail = f"HTTP {exc.status_code} after {config.max_retries} retries: {status_message(exc)}"
                if not final_status(exc.status_code):
                    raise LlmUnavailable("rate_limited" if exc.status_code == 429 else "server_error", detail) from None
                fallback = formats.fall_back(mode) if refuses_format(exc.status_code, detail) else None
                if fallback is not None:  # the endpoint refuses this response_format: the next mode
                    self.count("format.fallback")
                    return await self._send(key, messages, model, name, max_tokens)
                # Another 4xx: the request itself is refused; asking again changes nothing.
                return CacheEntry(kind="error", images=images, model=self.model_name, error=detail)
            except openai.APIConnectionError as exc:
                endpoint.failed(f"cannot connect ({type(exc).__name__})")
                raise LlmUnavailable(
                    "connection", f"cannot reach the LLM endpoint: {type(exc).__name__} ({config.max_retries} retries)"
                ) from None
            except BadReply as exc:
                problem = str(exc)
                too_large += isinstance(exc, TooLarge)
                continue
            endpoint.answered()
            if mode != FORMAT_MODES[0]:
                self.count(f"format.{mode}")
            try:
                return entry_of(data, images, self.model_name)
            except BadReply as exc:
                problem = str(exc)
        if too_large == config.max_retries + 1 and too_large >= 2:
            # Oversized every time it was asked (twice at least): asking again changes nothing.
            raise ReplyTooLarge(f"{problem}, on each of {too_large} tries")
        raise LlmUnavailable("bad_reply", f"{problem} ({config.max_retries} retries)")

    async def _post(self, key: str, body: dict[str, Any]) -> bytes:
        """The body of a 200 reply, read at most ``MAX_REPLY_BYTES``; ``BadReply`` when it is
        over the bound or the connection drops (or stalls past the timeout) mid-body."""
        response = await self.client.post(
            "/chat/completions",
            cast_to=_http.Response,
            body=json_body(body),
            options={"headers": {KEY_HEADER: key}},
            stream=True,
        )
        # client.post is `chat.completions.create` without its parameter transform, which walks
        # every message part (and the base64 of every image) in Python: same request, retries,
        # timeout and errors, a fraction of the CPU. The body is read here, bounded.
        try:
            declared = int(response.headers.get("content-length") or 0)
            if declared > MAX_REPLY_BYTES:
                raise TooLarge(f"reply of {declared} bytes, over the bound of {MAX_REPLY_BYTES}")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise TooLarge(f"reply of more than {MAX_REPLY_BYTES} bytes, over the bound")
                chunks.append(chunk)
            return b"".join(chunks)
        except (_http.TransportError, _http.StreamError) as exc:
            raise BadReply(f"the connection failed mid-reply ({type(exc).__name__})") from None
        finally:
            await response.aclose()


def entry_of(data: bytes, images: int, model: str) -> CacheEntry:
    """The cache entry of a 200 reply's body; ``BadReply`` when it is not a chat completion."""
    try:
        reply = json.loads(data)
    except ValueError:
        start = data[:40].decode("utf-8", "replace").strip()
        kind = "HTML" if start.lower().startswith(("<!doctype", "<html")) else "not JSON (cut short?)"
        raise BadReply(f"a 200 reply of {len(data)} bytes that is {kind}") from None
    try:
        choices = reply["choices"]
        choice = choices[0] if choices else None
        message = choice["message"] if choice is not None else {}
        content = message.get("content")
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        usage = reply.get("usage") or {}
        used = CachedUsage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (KeyError, TypeError, AttributeError, IndexError, ValueError):
        raise BadReply(f"a 200 reply of {len(data)} bytes that is not a chat completion") from None
    if not isinstance(content, str):
        refusal = message.get("refusal") if isinstance(message, dict) else None
        return CacheEntry(
            kind="error",
            usage=used,
            images=images,
            model=model,
            error=f"empty reply ({'refusal: ' + str(refusal) if refusal else 'no content'})",
        )
    return CacheEntry(
        kind="reply",
        content=content,
        usage=used,
        images=images,
        model=model,
        finish_reason=finish if isinstance(finish, str) else None,
    )


#: Final errors an earlier version cached although a retry could cure them (429, 5xx, timeouts).
TRANSIENT_ERROR = re.compile(r"HTTP (429|5\d\d|408|409)\b|timed out after ")


def status_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return type(exc).__name__
