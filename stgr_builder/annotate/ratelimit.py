"""Requests and tokens per minute, shared by every request of a build: every shard task, every
thread, every Dask worker process.

The state is one small JSON file under the dataset folder (``_cache/ratelimit.json``), read and
written under an exclusive ``flock`` (a Dask cluster shares the folder, as it does the budget
ledger). It holds two leaky buckets (requests, tokens), what the server said of its limits,
and until when everyone pauses after a 429.

- ``annotator.rpm`` / ``annotator.tpm``: caps. Requests are spaced so that no more than
  ``rpm / 60`` start in any second (a burst of at most half a second's worth), and their
  estimated tokens (prompt text / 4, 85 a picture, ``max_tokens``) no more than ``tpm / 60`` a second.
- The server's ``x-ratelimit-limit-requests`` / ``-tokens`` (OpenAI, Azure, ``stgr serve-llm
  --rpm``) are learned from its replies and kept to, at 90%, whether or not a cap is set; the
  ``remaining`` headers pull the buckets down when other clients share the key. Until the first
  reply says what the limits are, one request at a time is sent (a slow start, so a build does
  not open with a burst of refusals).
- A 429 pauses every request of the build for its ``Retry-After`` (or 1, 2, 4 ... 30 s when the
  server gives none); the client's own retry then asks again, paced.

A server that sends no rate-limit header (vLLM, Ollama) is not paced: only its 429s are.

>>> limiter = RateLimiter(Path("out/_cache/ratelimit.json"), rpm=500)   # doctest: +SKIP
>>> AsyncOpenAI(http_client=limiter.http_client())                      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stgr_builder.core.layout import RATELIMIT_FILE
from stgr_builder.core.ledger import read_unlocked, update_json
from stgr_builder.errors import warn

#: The state file, under the dataset folder.
STATE_FILE = RATELIMIT_FILE
#: Share of a server's advertised limit the client keeps to (arrival jitter, other clients).
LEARNED_SHARE = 0.9
#: Seconds a slow-start probe holds the gate before another request may try.
PROBE_S = 5.0
#: Seconds' worth of requests (tokens) the client may send at once: half the server's usual
#: one second, so arrival jitter (scheduling, the network) cannot make a burst the server refuses.
BURST_S = 0.5
#: Tokens counted per image when estimating a request (the low-detail figure).
IMAGE_TOKENS = 85
MAX_PAUSE_S = 30.0
#: The longest a bucket may make a request wait (its level read back no lower than this many
#: seconds' worth below zero): a queue of in-flight requests at a low cap, never a hand edit's hang.
MAX_QUEUE_S = 600.0

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_duration(text: str | None) -> float | None:
    """Seconds of an ``x-ratelimit-reset-*`` value.

    >>> parse_duration("6m0s"), parse_duration("1.5s"), parse_duration("120ms"), parse_duration("2")
    (360.0, 1.5, 0.12, 2.0)
    """
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def estimate_tokens(body: bytes, max_tokens: int | None = None) -> int:
    """Tokens a chat request will be charged, from its JSON body without parsing it: the text
    (every byte but the images' base64) / 4, ``IMAGE_TOKENS`` an image, plus ``max_tokens``."""
    images, image_bytes, pos = 0, 0, 0
    while True:
        start = body.find(b";base64,", pos)
        if start < 0:
            break
        end = body.find(b'"', start)
        end = len(body) if end < 0 else end
        images += 1
        image_bytes += end - start
        pos = end
    return (len(body) - image_bytes) // 4 + IMAGE_TOKENS * images + (max_tokens or 0)


def _headers_int(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateLimiter:
    """The build's pace (see the module's docstring). Thread- and process-safe; cheap to make
    (state lives in ``path``, or in memory when ``path`` is None)."""

    def __init__(
        self, path: Path | None, rpm: int | None = None, tpm: int | None = None, clock: Callable[[], float] = time.time
    ):
        self.path = Path(path) if path is not None else None
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self._lock = threading.Lock()
        self._memory: dict[str, Any] = {}
        #: What this instance saw: requests paced, seconds waited, 429s.
        self.stats = {"requests": 0, "waited_s": 0.0, "refused": 0}

    # -- state ----------------------------------------------------------------------------

    def _update(self, change: Callable[[dict], Any]) -> Any:
        with self._lock:
            if self.path is None:
                return change(self._memory)
            # Most calls change nothing (no cap, and a server that advertises no limits: two calls
            # a request): those read the file without its lock and write nothing. Under load the
            # locked read-modify-write cost ~0.4 ms of the event loop each.
            seen = read_unlocked(self.path)
            if seen is not None:
                state = _state_of(seen, self.clock())
                result = change(state)
                if json.dumps(state).encode() == seen:
                    return result
            path = self.path
            try:
                return update_json(path, lambda data: _state_of(data, self.clock(), path), change)
            except OSError as exc:  # a folder in its place, no permission: pace from memory
                warn(f"{path}: cannot be opened ({exc.strerror}); ignored, rate limits kept in memory")
                self.path = None
                return change(self._memory)

    def limits(self, state: dict) -> tuple[float | None, float | None]:
        """Requests and tokens per minute in force: the caps and the learned limits, the lower."""
        learned = state.get("learned") or {}
        out = []
        for cap, key in ((self.rpm, "rpm"), (self.tpm, "tpm")):
            seen = learned.get(key)
            values = [v for v in (cap, seen * LEARNED_SHARE if seen else None) if v]
            out.append(min(values) if values else None)
        return out[0], out[1]

    # -- before a request -----------------------------------------------------------------

    def reserve(self, tokens: int = 0) -> float | None:
        """Take a place for one request of ``tokens``; the seconds to wait before sending it, or
        None when the slow-start gate is held (ask again shortly)."""

        def take(state: dict) -> float | None:
            now = self.clock()
            if "learned" not in state:
                if state.get("probe_until", 0.0) > now:
                    return None
                state["probe_until"] = now + PROBE_S  # this request finds out the limits
            wait = max(0.0, state.get("pause_until", 0.0) - now)
            rpm, tpm = self.limits(state)
            for key, per_minute, cost, need in (("req", rpm, 1.0, 1.0), ("tok", tpm, float(tokens), 1e-9)):
                if not per_minute:
                    continue
                rate = per_minute / 60.0
                cap = max(1.0, rate * BURST_S)
                level, at = state.get(key, [cap, now])
                level = max(-rate * MAX_QUEUE_S, min(cap, level + max(0.0, now - at) * rate))
                if level < need:
                    wait = max(wait, (need - level) / rate)
                state[key] = [level - cost, now]
            return wait

        return self._update(take)

    async def wait(self, tokens: int = 0) -> float:
        """Sleep until a request of ``tokens`` may go; the seconds slept."""
        slept = 0.0
        while True:
            wait = self.reserve(tokens)
            if wait is None:
                await asyncio.sleep(0.05)
                slept += 0.05
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            slept += wait
            self.stats["requests"] += 1
            self.stats["waited_s"] += slept
            return slept

    # -- after a reply --------------------------------------------------------------------

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from a reply's headers; a 429 pauses every request for its Retry-After."""
        limit_req = _headers_int(headers, "x-ratelimit-limit-requests")
        limit_tok = _headers_int(headers, "x-ratelimit-limit-tokens")
        left_req = _headers_int(headers, "x-ratelimit-remaining-requests")
        left_tok = _headers_int(headers, "x-ratelimit-remaining-tokens")
        retry = None
        if status == 429:
            self.stats["refused"] += 1
            ms = _headers_int(headers, "retry-after-ms")
            retry = ms / 1000 if ms is not None else parse_duration(headers.get("retry-after"))

        def learn(state: dict) -> None:
            now = self.clock()
            if limit_req is not None or limit_tok is not None or "learned" not in state:
                # A reply without the headers (a proxy's 429, a 5xx) does not forget the limits.
                state["learned"] = {"rpm": limit_req, "tpm": limit_tok}
            state.pop("probe_until", None)
            rpm, tpm = self.limits(state)
            for key, per_minute, left in (("req", rpm, left_req), ("tok", tpm, left_tok)):
                if per_minute and left is not None:
                    level, at = state.get(key, [max(1.0, per_minute / 60 * BURST_S), now])
                    state[key] = [min(level, left), at]
            if status == 429:
                strikes = state.get("strikes", 0) + 1
                state["strikes"] = strikes
                pause = retry if retry is not None else min(MAX_PAUSE_S, 2.0 ** (strikes - 1))
                state["pause_until"] = max(state.get("pause_until", 0.0), now + min(MAX_PAUSE_S, pause))
                if rpm and "req" in state:
                    state["req"] = [min(state["req"][0], 0.0), state["req"][1]]
            elif status < 400:
                state["strikes"] = 0

        self._update(learn)

    # -- the HTTP client ------------------------------------------------------------------

    def event_hooks(self, max_tokens: int | None = None) -> dict[str, list]:
        """httpx event hooks that pace every chat request (each retry too) and read every reply."""

        async def on_request(request) -> None:
            if request.method == "POST" and request.url.path.endswith("/chat/completions"):
                await self.wait(estimate_tokens(request.content, max_tokens))

        async def on_response(response) -> None:
            request = response.request
            if request.method == "POST" and request.url.path.endswith("/chat/completions"):
                self.observe(response.status_code, response.headers)

        return {"request": [on_request], "response": [on_response]}

    def http_client(self, max_tokens: int | None = None):
        """The openai client's default HTTP client, with ``event_hooks``."""
        from openai import DefaultAsyncHttpxClient

        return DefaultAsyncHttpxClient(event_hooks=self.event_hooks(max_tokens))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shape_problem(state: Any) -> str | None:
    """What makes a decoded state unusable (a hand edit, another version's file), or None."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    for key in ("pause_until", "probe_until"):
        if key in state and not _finite(state[key]):
            return f"{key} is {state[key]!r}, not a number"
    strikes = state.get("strikes", 0)
    if not (_finite(strikes) and strikes >= 0):
        return f"strikes is {strikes!r}, not a count"
    for key in ("req", "tok"):
        if key in state and not (
            isinstance(state[key], list) and len(state[key]) == 2 and all(_finite(v) for v in state[key])
        ):
            return f"{key} is {state[key]!r}, not [level, time]"
    learned = state.get("learned", {})
    if not isinstance(learned, dict) or any(
        learned.get(k) is not None and not (_finite(learned[k]) and learned[k] > 0) for k in ("rpm", "tpm")
    ):
        return f"learned is {learned!r}, not limits per minute"
    return None


def _clamped(state: dict, now: float) -> dict:
    """A stored state bounded to what a server could have asked: a pause no longer than a
    Retry-After is kept to (``MAX_PAUSE_S``), a slow-start probe no longer than ``PROBE_S``,
    no bucket dated in the future (a node whose clock ran ahead), learned limits of 1 at least."""
    if state.get("pause_until", 0.0) > now + MAX_PAUSE_S:
        state["pause_until"] = now + MAX_PAUSE_S
    if state.get("probe_until", 0.0) > now + PROBE_S:
        state["probe_until"] = now + PROBE_S
    for key in ("req", "tok"):
        if key in state and state[key][1] > now:
            state[key] = [state[key][0], now]
    learned = state.get("learned")
    if learned:
        state["learned"] = {k: (max(1.0, v) if v is not None else None) for k, v in learned.items()}
    return state


def _state_of(data: bytes, now: float, path: Path | None = None) -> dict:
    """The state stored in ``data``, checked and clamped; a state that cannot be used starts
    afresh, named in a warning when ``path`` is given (a locked read: not a write under way)."""
    try:
        state = json.loads(data or b"{}")
    except ValueError:  # torn by a write under way (unlocked reads) or damaged: start afresh
        problem: str | None = "not JSON"
    else:
        problem = _shape_problem(state)
    if problem is not None:
        if path is not None:
            warn(f"{path}: {problem}; ignored, rate-limit state starts afresh")
        return {}
    return _clamped(state, now)


def limiter_for(root: Path | None, rpm: int | None, tpm: int | None) -> RateLimiter:
    """The build's limiter: state in ``root/_cache/ratelimit.json`` (in memory without a root)."""
    return RateLimiter(Path(root) / STATE_FILE if root is not None else None, rpm=rpm, tpm=tpm)


__all__ = ["RateLimiter", "estimate_tokens", "limiter_for", "parse_duration"]
