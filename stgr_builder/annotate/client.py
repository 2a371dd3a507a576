"""The HTTP wire of the LLM annotator: one chat completion through the request cache, the
run's budget and the ``openai`` client (retries, timeouts), a reply read bounded, each failure
mapped to its outcome (``sample_error``: pending, rejected, or a user error), and the re-ask
loop that sends a rejected reply back with its error."""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from stgr_builder.annotate.cache import CachedUsage, CacheEntry, request_key
from stgr_builder.annotate.ratelimit import RateLimiter
from stgr_builder.annotate.reply import short_error
from stgr_builder.annotate.request import count_images, json_body, response_format, schema_hash
from stgr_builder.core.resources import BudgetReached
from stgr_builder.errors import SampleError, StgrError
from stgr_builder.models import AnnotatorConfig, LlmUsage, RejectCode

if TYPE_CHECKING:
    from stgr_builder.annotate.llm import LlmAnnotator

#: Header carrying the request-cache key (not a secret: a hash of the request), so a server's
#: logs can tell a repeated request from a new one.
KEY_HEADER = "X-Stgr-Request-Key"

T = TypeVar("T")

try:  # the HTTP library of the openai client (httpx2 in openai 3.x, httpx before)
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http


class LlmError(Exception):
    """A request's final failure that no retry can change (a 4xx other than 408/409/429, a
    refusal, an empty reply); cached, and the sample is rejected."""


class LlmUnavailable(Exception):
    """A transient failure after the retries (429, 5xx, timeout, transport, a broken reply):
    never cached, and the sample is left pending for the next run. The message starts with
    the reason (``models.PENDING_REASONS``): ``server_error: HTTP 503 after 3 retries``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ReplyTooLarge(Exception):
    """Every try's reply body (two at least) was over ``MAX_REPLY_BYTES``: never cached, the
    sample is rejected. Once only (no retries configured) is a fault: the sample is pending."""


class BadReply(Exception):
    """A 200 reply that cannot be read as a chat completion (cut short, not JSON, HTML, dropped
    connection): retried like a 5xx."""


class TooLarge(BadReply):
    """A reply body over ``MAX_REPLY_BYTES`` (not read further)."""


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

SAMPLE_USAGE: contextvars.ContextVar[LlmUsage] = contextvars.ContextVar("stgr_sample_llm_usage")


class ReplyRejected(Exception):
    """Replies stayed invalid after every re-ask."""


#: What asking the LLM can fail with, each mapped to the sample's outcome by ``sample_error``.
REQUEST_FAILURES = (LlmUnavailable, ReplyTooLarge, LlmError, ReplyRejected)


def sample_error(err: Exception, during: str = "") -> SampleError:
    """The outcome of a sample whose request failed with ``err`` (one of ``REQUEST_FAILURES``):
    pending (transient: the next run finishes it) or a reject code. ``during`` names the step
    (e.g. crop verification) in the message."""
    if isinstance(err, LlmUnavailable):
        return SampleError(RejectCode.PENDING, f"{err} ({during})" if during else str(err))
    code = {
        ReplyTooLarge: RejectCode.LLM_REPLY_TOO_LARGE,
        LlmError: RejectCode.LLM_ERROR,
        ReplyRejected: RejectCode.LLM_INVALID_REPLY,
    }[type(err)]
    return SampleError(code, f"{during}: {err}" if during else str(err))


def final_status(status: int) -> bool:
    """Whether an HTTP error status is final (the request itself is refused: asking again changes
    nothing), rather than transient (408, 409, 429, 5xx: retried, then the sample is pending)."""
    return 400 <= status < 500 and status not in (408, 409, 429)


class Asker:
    """Requests of one batch: cache, budget, semaphore, usage and the re-ask loop."""

    def __init__(self, client, semaphore: asyncio.Semaphore, annotator: LlmAnnotator):
        self.client = client
        self.semaphore = semaphore
        self.cache = annotator.cache
        self.budget = annotator.budget
        self.annotator = annotator

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
        ``parse`` returns. A rejected reply is sent back with the error, so the model can fix it."""
        config = self.annotator.config
        error = ""
        for _ in range(config.max_invalid_retries + 1):
            text = await self.request(messages, prompt_version, model, name, digests)
            try:
                return parse(text)
            except ValueError as exc:
                error = short_error(exc)
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": reask.format(error=error)},
                ]
        raise ReplyRejected(f"{config.max_invalid_retries + 1} replies could not be used; last: {error}")

    async def request(
        self,
        messages: list[dict],
        prompt_version: str,
        model: type[BaseModel],
        name: str,
        digests: Mapping[str, str] | None = None,
    ) -> str:
        """One chat completion's content: from the cache, or sent (budget permitting) and cached."""
        annotator = self.annotator
        key = request_key(
            model=annotator.model,
            prompt_version=prompt_version,
            messages=messages,
            schema_hash=schema_hash(model),
            sampling=annotator._sampling,
            digests=digests,
        )
        entry = self.cache.get(key)
        if entry is not None and entry.kind == "error" and TRANSIENT_ERROR.match(entry.error or ""):
            entry = None  # a transient failure cached by an earlier version: ask again
        cached = entry is not None
        if not cached:
            if not self.budget.acquire():
                raise BudgetReached()
            entry = await self._send(key, messages, model, name)
            self.budget.add_tokens(entry.usage.prompt_tokens + entry.usage.completion_tokens)
            await asyncio.to_thread(self.cache.put, key, entry)  # before the reply is used
        used = LlmUsage(
            requests=1,
            cached=int(cached),
            failed=int(entry.kind == "error"),
            prompt_tokens=entry.usage.prompt_tokens,
            completion_tokens=entry.usage.completion_tokens,
            images=entry.images,
        )
        for usage in (annotator.usage, SAMPLE_USAGE.get(None)):
            if usage is not None:
                usage.add(used)
        if entry.kind == "error":
            raise LlmError(entry.error or "request failed")
        return entry.content or ""

    async def _send(self, key: str, messages: list[dict], model: type[BaseModel], name: str) -> CacheEntry:
        """One request: the reply, or a final error that no retry can change (both cached by the
        caller). Raises ``LlmUnavailable`` for a transient failure after the retries (never
        cached: the sample stays pending) and ``ReplyTooLarge``.

        The client retries 429 (Retry-After), 5xx, timeouts and connection errors; a 200 reply
        that cannot be read (cut short, not JSON, HTML, a dropped connection mid-body, over
        ``MAX_REPLY_BYTES``) is retried here, ``max_retries`` times with exponential backoff."""
        import openai

        config = self.annotator.config
        body: dict[str, Any] = {
            "model": self.annotator.model,
            "messages": messages,
            "response_format": response_format(model, name),
            "temperature": config.temperature,
        }
        if config.max_tokens is not None:
            body["max_tokens"] = config.max_tokens
        images = count_images(messages)
        problem = ""
        too_large = 0
        for attempt in range(config.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
            try:
                async with self.semaphore:
                    data = await self._post(key, body)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise StgrError(
                    f"the LLM endpoint refused the API key (HTTP {exc.status_code}): "
                    f"check OPENAI_API_KEY and OPENAI_BASE_URL"
                ) from None
            except openai.NotFoundError:
                raise StgrError(
                    f"the LLM endpoint does not know model {self.annotator.model!r} (HTTP 404): "
                    f"check annotator.model and OPENAI_BASE_URL"
                ) from None
            except openai.APITimeoutError:
                raise LlmUnavailable(
                    "timeout", f"no reply within {config.timeout:g}s ({config.max_retries} retries)"
                ) from None
            except openai.APIStatusError as exc:
                detail = f"HTTP {exc.status_code} after {config.max_retries} retries: {status_message(exc)}"
                if not final_status(exc.status_code):
                    raise LlmUnavailable("rate_limited" if exc.status_code == 429 else "server_error", detail) from None
                # Another 4xx: the request itself is refused; asking again changes nothing.
                return CacheEntry(kind="error", images=images, model=self.annotator.model, error=detail)
            except openai.APIConnectionError as exc:
                raise LlmUnavailable(
                    "connection", f"cannot reach the LLM endpoint: {type(exc).__name__} ({config.max_retries} retries)"
                ) from None
            except BadReply as exc:
                problem = str(exc)
                too_large += isinstance(exc, TooLarge)
                continue
            try:
                return entry_of(data, images, self.annotator.model)
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
    return CacheEntry(kind="reply", content=content, usage=used, images=images, model=model)


#: Final errors an earlier version cached although a retry could cure them (429, 5xx, timeouts).
TRANSIENT_ERROR = re.compile(r"HTTP (429|5\d\d|408|409)\b|timed out after ")


def status_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return type(exc).__name__
