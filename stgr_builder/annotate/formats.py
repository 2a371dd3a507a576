"""How a request asks for JSON, and which way an endpoint accepts: the ``response_format`` modes
best first, a request's body in a mode, and the mode each endpoint accepted, remembered under
the dataset folder so a fallback is paid once per endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stgr_builder.annotate.request import response_format
from stgr_builder.core.files import atomic_write_bytes
from stgr_builder.core.hashing import digest
from stgr_builder.core.layout import FORMATS_DIR

#: How a request asks for JSON, best first: the schema; any JSON object; the prompt's own words
#: (with the schema appended to the system message).
FORMAT_MODES = ("json_schema", "json_object", "prompt")
_FORMAT_REFUSAL_RE = re.compile(r"response_format|json_schema|json_object|schema|structured", re.IGNORECASE)


def refuses_format(status: int, detail: str) -> bool:
    """Whether a final 4xx says the endpoint refuses the request's ``response_format``."""
    return status in (400, 422) and bool(_FORMAT_REFUSAL_RE.search(detail))


class FormatMemory:
    """The ``response_format`` mode an endpoint accepts, remembered in the cache folder (one file
    per endpoint), so a fallback is paid once per endpoint, not per sample."""

    def __init__(self, root: Path | None, endpoint: str):
        self.path = root / FORMATS_DIR / f"{digest(endpoint)[:16]}.json" if root is not None else None
        self.lock = threading.Lock()
        self.mode = FORMAT_MODES[0]
        # Until a request in the current mode is answered, requests go out one at a time, so an
        # endpoint that refuses it is paid one refusal, not one per request in flight.
        self.confirmed = False
        self._probe: asyncio.Lock | None = None
        if self.path is not None and self.path.exists():
            found = json.loads(self.path.read_text(encoding="utf-8")).get("mode")
            self.mode = found if found in FORMAT_MODES else self.mode
            self.confirmed = True

    @contextlib.asynccontextmanager
    async def probing(self) -> AsyncIterator[None]:
        """Held by a request while the endpoint's format is not confirmed (nothing after)."""
        if not self.confirmed:
            if self._probe is None:
                self._probe = asyncio.Lock()
            async with self._probe:
                if not self.confirmed:  # still the first: go out holding it
                    yield
                    return
        yield

    def confirm(self, mode: str) -> None:
        """A request in ``mode`` was answered: the endpoint accepts it."""
        if mode == self.mode:
            self.confirmed = True

    def fall_back(self, refused: str) -> str | None:
        """The mode after ``refused`` (remembered), the current one when another request has
        moved on already, or None when there is none left."""
        with self.lock:
            if self.mode != refused:
                return self.mode
            later = FORMAT_MODES.index(refused) + 1
            if later >= len(FORMAT_MODES):
                return None
            self.mode = FORMAT_MODES[later]
            if self.path is not None:
                atomic_write_bytes(self.path, json.dumps({"mode": self.mode}).encode())
            return self.mode


def request_body(
    model_name: str,
    messages: list[dict],
    reply_model: type[BaseModel],
    schema_name: str,
    temperature: float,
    max_tokens: int | None,
    mode: str = FORMAT_MODES[0],
) -> dict[str, Any]:
    """The body of a chat completion request asking for a ``reply_model`` in ``mode``."""
    body: dict[str, Any] = {"model": model_name, "messages": messages}
    if mode == "json_schema":
        body["response_format"] = response_format(reply_model, schema_name)
    elif mode == "json_object":
        body["response_format"] = {"type": "json_object"}
    else:
        schema = json.dumps(reply_model.model_json_schema(), separators=(",", ":"))
        note = {"role": "system", "content": f"Reply with one JSON object that follows this JSON Schema: {schema}"}
        body["messages"] = [*messages, note]
    body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body
