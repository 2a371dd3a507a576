"""One Prefect server for the whole test session, as a user who runs many builds keeps one
(`prefect server start`, then ``PREFECT_API_URL``).

Without it every command a test starts (``stgr build`` in a subprocess, each Dask or Ray worker
of an in-process build) started a temporary server of its own: a process, an import of Prefect's
server and a database migration check each, several seconds of CPU per test on a 2-core machine.
Tests of the temporary server itself (that a killed build's server goes with it, that a lost
one is named) drop ``PREFECT_API_URL`` for the command they start.

It is Prefect's own temporary server, started the way Prefect starts one
(``prefect.server.api.server.SubprocessASGIServer``), in a process of its own so that this
process's Prefect is not imported before ``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.request

#: How long the server may take to answer its health check (a loaded machine, a new database).
START_TIMEOUT_S = 120.0


def start_session_server() -> str:
    """Start the server, wait until it answers, stop it at exit; its API URL."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
        stdin=subprocess.DEVNULL,
    )
    atexit.register(_stop, server)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the session's Prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=5) as reply:
                if reply.status == 200:
                    return api
        except OSError:
            time.sleep(0.1)
    _stop(server)
    raise RuntimeError(f"the session's Prefect server did not answer within {START_TIMEOUT_S:.0f} s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
