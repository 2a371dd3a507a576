"""The policy: what the dry-run server answers a chat request with, read from the prompt (no
model behind it; see ``server``'s docstring). Online requests and batch lines alike."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Sequence
from typing import Any

from stgr_builder.dryrun import events
from stgr_builder.dryrun.judge import DemoJudge, verdicts
from stgr_builder.dryrun.noisy import annotation_content
from stgr_builder.dryrun.options import MODEL_ID, ServerOptions

_CANDIDATE_RE = re.compile(r"^B(\d+): (.+?) \(([\d.]+)\) on frame (\d+)", re.MULTILINE)
_OBJECTS_RE = re.compile(r"^Objects to ground: (.*)$", re.MULTILINE)


def message_texts(messages: list[dict], role: str) -> str:
    out = []
    for message in messages:
        if message.get("role") != role:
            continue
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [part.get("text", "") for part in content if part.get("type") == "text"]
    return "\n".join(out)


def image_count(messages: list[dict]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "image_url"
    )


_FRAME_RE = re.compile(r"^Frame (\d+) at t=([\d.]+)s", re.MULTILINE)
_SPAN_RE = re.compile(r"^Annotated span: ([\d.]+)s to ([\d.]+)s", re.MULTILINE)


def _frames_in_span(user_text: str) -> set[int] | None:
    """The numbers of the frames shown inside the prompt's annotated span; None when the prompt
    shows no frame times or no span (nothing to keep to)."""
    frames = {int(n): float(t) for n, t in _FRAME_RE.findall(user_text)}
    span = _SPAN_RE.search(user_text)
    if span is None or not frames:
        return None
    low, high = float(span.group(1)), float(span.group(2))
    return {n for n, t in frames.items() if low <= t <= high}


def annotation_reply(user_text: str) -> dict[str, Any]:
    """The policy's reply to an annotation prompt (the first user message's text)."""
    cands = [(int(i), label, float(score), int(frame)) for i, label, score, frame in _CANDIDATE_RE.findall(user_text)]
    objects_line = _OBJECTS_RE.search(user_text)
    names = [n.strip() for n in objects_line.group(1).split(",")] if objects_line else []
    names = [n for n in names if n and not n.startswith("(")]
    if "as [SPAN]" in user_text:  # a temporal task: key frames inside the annotated span only
        inside = _frames_in_span(user_text)
        cands = cands if inside is None else [c for c in cands if c[3] in inside]
    picks: list[tuple[int, str, int]] = []  # (candidate id, name, frame)
    for name in names:
        having = sorted((c for c in cands if c[1].lower() == name.lower()), key=lambda c: (-c[2], c[0]))
        if not having:
            continue
        best = having[0]
        picks.append((best[0], name, best[3]))
        other = [c for c in having if c[3] != best[3]]
        if other:
            picks.append((other[0][0], name, other[0][3]))
    if not picks and cands and not names:
        best = min(cands, key=lambda c: (-c[2], c[0]))
        picks.append((best[0], best[1], best[3]))
    frames: dict[int, list[dict]] = {}
    for cid, name, frame in picks:
        if all(b["id"] != cid for b in frames.get(frame, [])):
            frames.setdefault(frame, []).append({"id": cid, "name": name})
    sentences = [f"The question is about {', '.join(names) if names else 'what the video shows'}."]
    for frame in sorted(frames):
        for box in frames[frame]:
            sentences.append(f"On frame {frame} the {box['name']} is visible [B{box['id']}].")
    if "as [SPAN]" in user_text:
        sentences.append("The event therefore spans [SPAN].")
    sentences.append("This supports the given answer.")
    return {"key_frames": [{"frame": f, "boxes": frames[f]} for f in sorted(frames)], "reasoning": " ".join(sentences)}


#: The judge of every server in this process (the demo detector, loaded on first use).
JUDGE = DemoJudge()


def _first_image(messages: list[dict]) -> bytes | None:
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            url = (part.get("image_url") or {}).get("url", "") if part.get("type") == "image_url" else ""
            if ";base64," in url:
                return base64.b64decode(url.split(";base64,", 1)[1])
    return None


def crop_reply(user_text: str, messages: list[dict], deny: Sequence[str]) -> dict[str, Any]:
    """The judge's verdicts: each asked object found on its crop's pixels by the demo detector."""
    return verdicts(JUDGE, messages, deny)


def _broken(schema_name: str, good: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """JSON that violates the schema (or cites a box that was never offered)."""
    if schema_name == "crop_verdicts":
        return {"answers": ["maybe"]}
    if schema_name == events.SCHEMA_NAME:
        return {"answer": "maybe"}
    if rng.random() < 0.5:
        return {"key_frames": good["key_frames"]}  # no reasoning
    return {"key_frames": [{"frame": 1, "boxes": [{"id": 999, "name": "ghost"}]}], "reasoning": "[B999]"}


def refused_format(body: dict, options: ServerOptions) -> tuple[int, dict] | None:
    """The noisy policy's 400 for a request asking for ``response_format: json_schema``."""
    kind = (body.get("response_format") or {}).get("type")
    if options.policy == "noisy" and options.noisy.refuse_json_schema and kind == "json_schema":
        message = "response_format of type json_schema is not supported by this server (injected)"
        return 400, {"error": {"message": message, "type": "invalid_request_error", "param": "response_format"}}
    return None


def chat_reply(body: dict, fault: str | None, rng_seed: bytes, options: ServerOptions) -> tuple[int, dict]:
    """(status, body) of a chat completion request answered by the policy, for a batch line:
    a fault that an online request meets as an HTTP failure is a 429 or 500 line here, and one
    of the reply's content (``malformed``, ``schema``) breaks the content as online."""
    if fault == "429":
        return 429, {"error": {"message": "rate limited (injected)", "type": "rate_limit_error"}}
    if fault in ("500", "timeout", "hang", "truncated", "dropped", "html", "huge"):
        return 500, {"error": {"message": f"server error (injected {fault})", "type": "server_error"}}
    refused = refused_format(body, options)
    if refused is not None:
        return refused
    schema_name = schema_of(body)
    return 200, completion(body, schema_name, fault, rng_seed, deny=(), reply_id="chatcmpl-batch", options=options)


def schema_of(body: dict) -> str:
    """The reply schema a request asks for: its json_schema's name, or (json_object or no
    response_format) read from the prompt: a crop question is the judge's."""
    named = ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")
    if named:
        return named
    # The judge's question opens its prompt; an annotation prompt opens with "Task:".
    question = message_texts((body.get("messages") or [])[:2], "user").lstrip()
    if events.is_event_question(question):
        return events.SCHEMA_NAME
    return "crop_verdicts" if question.startswith("Crop 1: ") else "stgr_cot_reply"


def completion(
    body: dict,
    schema_name: str,
    fault: str | None,
    rng_seed: bytes,
    *,
    deny: Sequence[str],
    reply_id: str,
    options: ServerOptions | None = None,
) -> dict:
    """The chat completion the policy answers ``body`` with (online and in batch lines alike);
    the content faults ``malformed`` (cut short) and ``schema`` (a broken reply) apply here."""
    messages = body.get("messages") or []
    user_text = message_texts(messages[:2], "user")  # the first user turn holds the prompt
    judging = schema_name in ("crop_verdicts", events.SCHEMA_NAME)
    if schema_name == events.SCHEMA_NAME:  # the event judge: dryrun/events.py
        good = events.event_reply(user_text, _first_image(messages), JUDGE)
    else:
        good = crop_reply(user_text, messages, deny) if judging else annotation_reply(user_text)
    finish = "stop"
    if options is not None and options.policy == "noisy" and not judging and fault is None:
        content, finish = annotation_content(good, user_text, messages, body.get("max_tokens"), options.noisy)
    elif fault == "malformed":
        content = json.dumps(good)[: max(1, len(json.dumps(good)) // 2)]
    elif fault == "schema":
        content = json.dumps(_broken(schema_name, good, random.Random(rng_seed)))
    else:
        content = json.dumps(good)
    text = message_texts(messages, "system") + message_texts(messages, "user")
    prompt_tokens = len(text) // 4 + 85 * image_count(messages)
    completion_tokens = max(1, len(content) // 4)
    return {
        "id": reply_id,
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", MODEL_ID),
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
