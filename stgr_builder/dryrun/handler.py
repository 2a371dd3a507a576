"""The dry-run server's HTTP side: the threaded server (its counts, limits and fault schedule) and
the request handler that routes, meters, injects faults and sends the policy's reply."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stgr_builder.dryrun.batches import BatchApi
from stgr_builder.dryrun.options import HUGE_BYTES, KEY_HEADER, MODEL_ID, ServerOptions
from stgr_builder.dryrun.policy import completion, image_count, message_texts, refused_format, schema_of
from stgr_builder.dryrun.traffic import RateLimits, Stats


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], options: ServerOptions):
        super().__init__(address, _Handler)
        self.options = options
        self.stats = Stats()
        self.fault_lock = threading.Lock()
        self.arrivals = 0
        self.faulted = 0
        self.limits = RateLimits(options.rpm, options.tpm) if (options.rpm or options.tpm) else None
        self.batch_api = BatchApi(options, self.fault)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (~40 ms a reply), which would cap a 200 ms server at 0.8 of its rate.
    disable_nagle_algorithm = True
    server: HttpServer

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
            len(message_texts(messages, "system") + message_texts(messages, "user")) // 4
            + 85 * image_count(messages)
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
