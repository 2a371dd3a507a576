"""The JSON object in a model's reply, however an endpoint wraps it (fences, prose, a BOM)."""

from __future__ import annotations

import json
import re

_FENCE_RE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def extract_json(text: str) -> str:
    r"""The JSON object of a reply as real endpoints send it: bare, after a BOM or whitespace,
    in a ```json fence, or with prose before or after it. The text itself when none is found
    (strict validation then says what is wrong). Asking again would not cure such a habit.

    >>> extract_json('Sure! Here it is:\n```json\n{"a": 1}\n```\nHope this helps.')
    '{"a": 1}'
    >>> extract_json('\ufeff  {"a": {"b": 2}} -- done')
    '{"a": {"b": 2}}'
    """
    stripped = text.lstrip("\ufeff").strip()
    candidates = [m.group(1).strip() for m in _FENCE_RE.finditer(stripped)] + [stripped]
    for candidate in candidates:
        found = _first_object(candidate)
        if found is not None:
            return found
    return stripped


def _first_object(text: str) -> str | None:
    """The first complete JSON object in ``text``, by its position."""
    start = text.find("{")
    while start != -1:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except ValueError:
            value, end = None, start
        if isinstance(value, dict):
            return text[start:end]
        start = text.find("{", start + 1)
    return None
