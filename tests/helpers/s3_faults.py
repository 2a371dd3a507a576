"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the S3 server: what a real object store
does to a client under load, over real sockets.

Every request is forwarded to the server as it came; a request a rule matches gets its fault
instead: ``slowdown`` answers 503 with S3's ``SlowDown`` error (the store asks the client to back
off), ``drop`` reads half the request's body and closes the connection (a connection lost
mid-upload: the server never receives the object), ``cut`` sends the headers and half the
reply's body, then closes (a connection lost mid-download), ``lost`` forwards the request and
closes before replying (the store did it, the client never heard). Rules are ``Fault``s, or any
``choose(method, path, range)``. The proxy also counts what it returns: ``bytes`` (body bytes the
client really downloaded) and ``requests`` (method, path, body bytes).

``one_write_at_a_time``: PUTs reach the server one after the other. moto checks a PUT's
``If-Match``/``If-None-Match`` and then stores the object as two steps (two PUTs at once may both
pass), where S3 does both as one; serialized, conditional writes behave as on S3.

    with FaultProxy(s3.endpoint, [Fault("PUT", "/stgr_cot/part-", "drop", times=1)]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        ...
        assert proxy.injected == {"drop": 1}
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass
class Fault:
    """``kind`` for the first ``times`` requests of ``method`` whose path holds ``path_part``."""

    method: str
    path_part: str
    kind: str  # "slowdown" | "drop" | "cut" | "lost"
    times: int = 1


class FaultProxy:
    """A threaded proxy to ``upstream``; ``injected`` counts the faults given by kind."""

    def __init__(self, upstream: str, faults: list[Fault] | None = None, one_write_at_a_time: bool = False):
        self.upstream = urlsplit(upstream)
        self.one_write_at_a_time = one_write_at_a_time
        self.write_lock = threading.Lock()
        self.faults = faults or []
        self.choose: Callable[[str, str, str], str | None] | None = None
        self.injected: Counter[str] = Counter()
        self.bytes = 0
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fault_for(self, method: str, path: str, range_: str = "") -> str | None:
        if self.choose is not None:
            kind = self.choose(method, path, range_)
            if kind is not None:
                with self._lock:
                    self.injected[kind] += 1
            return kind
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path_part in path and fault.times > 0:
                    fault.times -= 1
                    self.injected[fault.kind] += 1
                    return fault.kind
        return None

    def returned(self, method: str, path: str, data: bytes) -> None:
        with self._lock:
            self.bytes += len(data)
            self.requests.append((method, path, len(data)))

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the clients use it

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self, limit: int | None = None) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunked()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length if limit is None else min(limit, length))

        def _chunked(self) -> bytes:
            # re-encoded as one body with a Content-Length upstream
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()

        def _drop(self) -> None:
            self._body(limit=int(self.headers.get("Content-Length") or 0) // 2)
            self._close()

        def _close(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _forward(self) -> None:
            fault = proxy.fault_for(self.command, self.path, self.headers.get("Range", ""))
            if fault == "drop":
                self._drop()
                return
            body = self._body()
            if fault == "slowdown":
                self._reply(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                return
            serial = proxy.one_write_at_a_time and self.command == "PUT"
            with proxy.write_lock if serial else contextlib.nullcontext():
                response, data = self._upstream(body)
            proxy.returned(self.command, self.path, data)
            if fault == "lost":
                self._close()
                return
            head = self.command == "HEAD"  # its Content-Length is the object's: kept
            kept = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in HOP_BY_HOP or (head and k.lower() == "content-length")
            ]
            self._reply(response.status, kept, data, head=head, cut=fault == "cut")

        def _upstream(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
            upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            upstream.close()
            return response, data

        def _reply(self, status: int, headers: list, data: bytes, head: bool = False, cut: bool = False) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if head:
                return
            if cut:  # half the body, then the connection is gone
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._close()
                return
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler
