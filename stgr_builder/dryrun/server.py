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
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stgr_builder.dryrun.judge import DemoJudge, verdicts
from stgr_builder.dryrun.noisy import NoisyOptions, annotation_content

FAULT_KINDS = ("429", "500", "timeout", "malformed", "schema", "truncated", "dropped", "html", "huge", "hang")
#: Size of a ``huge`` fault's body.
HUGE_BYTES = 5 << 20
MODEL_ID = "stgr-dry-run"
KEY_HEADER = "X-Stgr-Request-Key"

_CANDIDATE_RE = re.compile(r"^B(\d+): (.+?) \(([\d.]+)\) on frame (\d+)", re.MULTILINE)
_OBJECTS_RE = re.compile(r"^Objects to ground: (.*)$", re.MULTILINE)


@dataclass
class ServerOptions:
    latency_ms: float = 0.0  # from a request's arrival (its headers read) to its reply
    fault_rate: float = 0.0
    faults: Sequence[str] = FAULT_KINDS
    seed: int = 0
    retry_after_s: float = 0.1
    hang_s: float = 5.0
    crop_deny: Sequence[str] = ()
    rpm: float | None = None
    tpm: float | None = None
    batch_delay_s: float = 0.2
    policy: str = "oracle"  # or "noisy": mistakes as ``noisy``'s options say
    noisy: NoisyOptions = field(default_factory=NoisyOptions)
    list_batches: bool = True  # False: GET /v1/batches answers 404, as some providers' compatible APIs do


class _Limits:
    """The server's per-minute limits: a bucket per kind holding one second's worth."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.lock = threading.Lock()
        self.kinds = {
            kind: [per_minute, max(1.0, per_minute / 60), time.monotonic()]
            for kind, per_minute in (("requests", rpm), ("tokens", tpm))
            if per_minute
        }

    def _refill(self, kind: str, now: float) -> tuple[float, float]:
        per_minute, level, at = self.kinds[kind]
        rate = per_minute / 60
        level = min(max(1.0, rate), level + (now - at) * rate)
        self.kinds[kind][1:] = [level, now]
        return level, rate

    def take(self, tokens: int) -> tuple[float | None, dict[str, str]]:
        """Admit a request of ``tokens`` (None) or refuse it (seconds until it would pass), and
        the rate-limit headers either way."""
        with self.lock:
            now = time.monotonic()
            wait = 0.0
            for kind, need in (("requests", 1.0), ("tokens", 1e-9)):
                if kind in self.kinds:
                    level, rate = self._refill(kind, now)
                    if level < need:
                        wait = max(wait, (need - level) / rate)
            if not wait:
                for kind, cost in (("requests", 1.0), ("tokens", float(tokens))):
                    if kind in self.kinds:
                        self.kinds[kind][1] -= cost
            headers = {}
            for kind, (per_minute, level, _) in self.kinds.items():
                rate, cap = per_minute / 60, max(1.0, per_minute / 60)
                headers[f"x-ratelimit-limit-{kind}"] = f"{per_minute:g}"
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(level)))
                headers[f"x-ratelimit-reset-{kind}"] = f"{max(0.0, cap - level) / rate:.3f}s"
            return (wait or None), headers


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int = 0
    by_outcome: Counter = field(default_factory=Counter)
    by_schema: Counter = field(default_factory=Counter)
    by_key: Counter = field(default_factory=Counter)
    ok_keys: set = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0  # TCP connections accepted (a client that keeps its connections opens few)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": self.total,
                "by_outcome": dict(self.by_outcome),
                "by_schema": dict(self.by_schema),
                "by_key": dict(self.by_key),
                "ok_keys": sorted(self.ok_keys),
                "max_in_flight": self.max_in_flight,
                "connections": self.connections,
            }


# ---------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------


def _texts(messages: list[dict], role: str) -> str:
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


def _images(messages: list[dict]) -> int:
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


def crop_reply(user_text: str, messages: list[dict], deny: Sequence[str]) -> dict[str, Any]:
    """The judge's verdicts: each asked object found on its crop's pixels by the demo detector."""
    return verdicts(JUDGE, messages, deny)


def _broken(schema_name: str, good: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """JSON that violates the schema (or cites a box that was never offered)."""
    if schema_name == "crop_verdicts":
        return {"answers": ["maybe"]}
    if rng.random() < 0.5:
        return {"key_frames": good["key_frames"]}  # no reasoning
    return {"key_frames": [{"frame": 1, "boxes": [{"id": 999, "name": "ghost"}]}], "reasoning": "[B999]"}


# ---------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], options: ServerOptions):
        super().__init__(address, _Handler)
        self.options = options
        self.stats = _Stats()
        self.fault_lock = threading.Lock()
        self.arrivals = 0
        self.faulted = 0
        self.limits = _Limits(options.rpm, options.tpm) if (options.rpm or options.tpm) else None
        self.batch_api = _BatchApi(self)

    def stats_snapshot(self) -> dict[str, Any]:
        return {**self.stats.snapshot(), **self.batch_api.counts()}

    def process_request(self, request, client_address) -> None:
        with self.stats.lock:
            self.stats.connections += 1
        super().process_request(request, client_address)

    def fault(self) -> str | None:
        """The fault for the next request, or None. Evenly spaced, not drawn: of every n requests
        ``round(n * fault_rate)`` are faults, the kinds in turn (``seed`` picks the first), so a
        build of 25 requests at 0.2 meets every kind, however its requests interleave."""
        rate, kinds = self.options.fault_rate, list(self.options.faults)
        if rate <= 0 or not kinds:
            return None
        with self.fault_lock:
            self.arrivals += 1
            n = self.arrivals
            if int(n * rate) == int((n - 1) * rate):
                return None
            self.faulted += 1
            return kinds[(self.options.seed + self.faulted - 1) % len(kinds)]


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
    question = _texts((body.get("messages") or [])[:2], "user").lstrip()
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
    user_text = _texts(messages[:2], "user")  # the first user turn holds the prompt
    judging = schema_name == "crop_verdicts"
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
    text = _texts(messages, "system") + _texts(messages, "user")
    prompt_tokens = len(text) // 4 + 85 * _images(messages)
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


def _multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)  # bytes, or None for an empty part
        if isinstance(name, str):  # a part without a name cannot be asked for
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class _BatchApi:
    """Files and batches of the OpenAI Batch API, in memory (see the module's docstring)."""

    def __init__(self, server: _Server):
        self.server = server
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.lines = 0

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {"files": len(self.files), "batches": len(self.batches), "batch_lines": self.lines}

    def _file(self, data: bytes, filename: str, purpose: str) -> dict:
        with self.lock:
            file_id = f"file-{len(self.files) + 1:06d}"
            record = {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
            }
            self.files[file_id] = record
            self.contents[file_id] = data
        return record

    @staticmethod
    def _missing(what: str) -> tuple[int, dict]:
        return 404, {"error": {"message": f"no such {what}", "type": "invalid_request_error"}}

    def post(self, path: str, raw: bytes, content_type: str) -> tuple[int, Any]:
        if path.endswith("/files"):
            try:
                fields = _multipart(raw, content_type)
                filename, data = fields["file"]
                purpose = fields.get("purpose", (None, b"batch"))[1].decode()
            except (KeyError, ValueError, UnicodeDecodeError) as exc:
                return 400, {
                    "error": {
                        "message": f"a multipart upload with 'file' and 'purpose': {exc}",
                        "type": "invalid_request_error",
                    }
                }
            return 200, self._file(data, filename or "upload.jsonl", purpose)
        if path.endswith("/cancel"):
            batch_id = path.rsplit("/", 2)[-2]
            with self.lock:
                batch = self.batches.get(batch_id)
                if batch is None:
                    return self._missing("batch")
                if batch["status"] in ("validating", "in_progress"):
                    batch["status"] = "cancelled"
                return 200, dict(batch)
        if path.endswith("/batches"):
            try:
                request = json.loads(raw)
                data = self.contents[request["input_file_id"]]
            except (ValueError, KeyError, TypeError):
                return 400, {
                    "error": {"message": "input_file_id names no uploaded file", "type": "invalid_request_error"}
                }
            now = int(time.time())
            with self.lock:
                batch_id = f"batch_{len(self.batches) + 1:06d}"
                batch = {
                    "id": batch_id,
                    "object": "batch",
                    "endpoint": request.get("endpoint", "/v1/chat/completions"),
                    "errors": None,
                    "input_file_id": request["input_file_id"],
                    "completion_window": request.get("completion_window", "24h"),
                    "status": "in_progress",
                    "output_file_id": None,
                    "error_file_id": None,
                    "created_at": now,
                    "in_progress_at": now,
                    "completed_at": None,
                    "cancelled_at": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "metadata": request.get("metadata"),
                }
                self.batches[batch_id] = batch
            threading.Thread(target=self._run, args=(batch_id, data), daemon=True, name=batch_id).start()
            return 200, dict(batch)
        return 404, {"error": {"message": f"no route {path}", "type": "not_found"}}

    def get(self, path: str) -> tuple[int, Any]:
        parts = path.split("/")
        if parts[-1] == "batches" and not self.server.options.list_batches:
            return 404, {"error": {"message": "listing batches is not supported", "type": "not_found"}}
        if parts[-1] == "batches":
            with self.lock:
                data = [dict(b) for b in sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)]
            return 200, {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        if len(parts) >= 2 and parts[-2] == "batches":
            with self.lock:
                batch = self.batches.get(parts[-1])
            return (200, dict(batch)) if batch is not None else self._missing("batch")
        if len(parts) >= 3 and parts[-1] == "content" and parts[-3] == "files":
            with self.lock:
                content = self.contents.get(parts[-2])
            return (200, content) if content is not None else self._missing("file")
        if len(parts) >= 2 and parts[-2] == "files":
            with self.lock:
                record = self.files.get(parts[-1])
            return (200, dict(record)) if record is not None else self._missing("file")
        return 404, {"error": {"message": f"no route {path}", "type": "not_found"}}

    def _run(self, batch_id: str, data: bytes) -> None:
        time.sleep(self.server.options.batch_delay_s)
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            with self.lock:
                if self.batches[batch_id]["status"] == "cancelled":
                    return
                self.lines += 1
            try:
                request = json.loads(line)
                custom_id, body = request["custom_id"], request["body"]
            except (ValueError, KeyError, TypeError):
                failed.append(
                    {
                        "id": f"batch_req_{number}",
                        "custom_id": None,
                        "response": None,
                        "error": {"code": "invalid_line", "message": f"line {number} is not a batch request"},
                    }
                )
                continue
            status, reply = chat_reply(body, self.server.fault(), line, self.server.options)
            record = {
                "id": f"batch_req_{number}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"req_{number}", "body": reply},
                "error": None,
            }
            (ok if status == 200 else failed).append(record)
        outputs = {}
        for kind, records in (("output", ok), ("error", failed)):
            if records:
                text = "".join(json.dumps(r) + "\n" for r in records).encode()
                outputs[kind] = self._file(text, f"{batch_id}_{kind}.jsonl", "batch_output")["id"]
        with self.lock:
            batch = self.batches[batch_id]
            if batch["status"] == "cancelled":
                return
            batch.update(
                status="completed",
                completed_at=int(time.time()),
                output_file_id=outputs.get("output"),
                error_file_id=outputs.get("error"),
                request_counts={"total": len(ok) + len(failed), "completed": len(ok), "failed": len(failed)},
            )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (~40 ms a reply), which would cap a 200 ms server at 0.8 of its rate.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: tests and dry runs read /stats instead

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        cut: int | None = None,
    ) -> None:
        """Send a reply; ``cut``: only that many bytes of the body, then close the connection."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in {**(headers or {}), **getattr(self, "limit_headers", {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data if cut is None else data[:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout, too large): nothing to do

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.rstrip("/")
        if path.endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "stgr"}]})
        elif path.endswith("/stats"):
            self._send(200, self.server.stats_snapshot())
        elif "/files" in path or "/batches" in path:
            self._send(*self.server.batch_api.get(path.split("?", 1)[0].rstrip("/")))
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self.arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.rstrip("/")
        if "/files" in path or "/batches" in path:
            self._send(*self.server.batch_api.post(path, raw, self.headers.get("Content-Type", "")))
            return
        if not path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            return
        stats, options = self.server.stats, self.server.options
        schema_name = schema_of(body)
        key = self.headers.get(KEY_HEADER, "")
        with stats.lock:
            stats.total += 1
            stats.by_schema[schema_name or "(none)"] += 1
            if key:
                stats.by_key[key] += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if not self._admitted(body):
                return
            refused = refused_format(body, options)
            if refused is not None:
                with stats.lock:
                    stats.by_outcome["format_refused"] += 1
                self._send(*refused)
                return
            self._complete(body, raw, schema_name, key, options)
        finally:
            with stats.lock:
                stats.in_flight -= 1

    def _admitted(self, body: dict) -> bool:
        """Within the rate limits (and the headers that say so set on the reply), or refused
        with a 429 now, before any latency or fault."""
        self.limit_headers: dict[str, str] = {}
        if self.server.limits is None:
            return True
        messages = body.get("messages") or []
        tokens = (
            len(_texts(messages, "system") + _texts(messages, "user")) // 4
            + 85 * _images(messages)
            + int(body.get("max_tokens") or 0)
        )
        wait, self.limit_headers = self.server.limits.take(tokens)
        if wait is None:
            return True
        with self.server.stats.lock:
            self.server.stats.by_outcome["rate_limited"] += 1
        self._send(
            429,
            {"error": {"message": "rate limit reached (requests or tokens per minute)", "type": "rate_limit_error"}},
            {"Retry-After": f"{wait:.3f}", "retry-after-ms": str(max(1, round(wait * 1000)))},
        )
        return False

    def _complete(self, body: dict, raw: bytes, schema_name: str, key: str, options: ServerOptions) -> None:
        stats = self.server.stats
        if options.latency_ms:
            # The latency is from the request's arrival, as a provider's is measured: reading and
            # parsing the body are part of it, not added to it.
            time.sleep(max(0.0, options.latency_ms / 1000 - (time.monotonic() - self.arrived)))
        fault = self.server.fault()
        outcome = fault or "ok"
        with stats.lock:
            stats.by_outcome[outcome] += 1
        if fault == "429":
            retry = options.retry_after_s
            self._send(
                429,
                {"error": {"message": "rate limited (injected)", "type": "rate_limit_error"}},
                {"Retry-After": f"{retry:g}", "retry-after-ms": str(round(retry * 1000))},
            )
            return
        if fault == "500":
            self._send(500, {"error": {"message": "server error (injected)", "type": "server_error"}})
            return
        if fault == "timeout":
            time.sleep(options.hang_s)
            self._send(504, {"error": {"message": "timed out (injected)", "type": "timeout"}})
            return
        if fault == "hang":
            time.sleep(options.hang_s)
            self.close_connection = True  # no status line, no header, nothing
            return
        if fault == "html":
            page = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>(injected)</body></html>"
            self._send(200, page, content_type="text/html")
            return
        if fault == "huge":
            filler = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}}]})
            self._send(200, filler.encode() + b" " * (HUGE_BYTES - len(filler)))
            return
        if outcome == "ok" and key:
            with stats.lock:
                stats.ok_keys.add(key)
        reply = json.dumps(
            completion(
                body,
                schema_name,
                fault,
                raw,
                deny=[d.lower() for d in options.crop_deny],
                reply_id=f"chatcmpl-{stats.total}",
                options=options,
            )
        ).encode()
        if fault == "truncated":
            self._send(200, reply[: len(reply) // 2])
        elif fault == "dropped":
            self._send(200, reply, cut=len(reply) // 2)
        else:
            self._send(200, reply)


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------


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
        self._server = _Server((host, port), self.options)
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
        self._server.stats = _Stats()

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
