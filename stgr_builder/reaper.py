"""The processes a command starts die with it, however it dies.

Prefect's temporary API server (and a Dask LocalCluster's workers) are child processes of
``stgr build``. When the command exits they are stopped at exit; when it is killed (SIGKILL,
the OOM killer) nothing stops them: the server went on holding its port and Prefect's
database, and a build started next could not reach its own temporary API.

``start()`` puts a token unique to this command into its environment (``STGR_REAPER_TOKEN``:
every process it starts afterwards inherits it, Prefect's server and Dask's workers included)
and launches a small watcher process (this file run as a script: stdlib only, no project
import) in its own session, so a terminal's Ctrl-C does not reach it. The watcher checks every
0.2 s whether the command is gone (exited, killed, or a zombie). Then it finds the processes to
stop: those carrying the token (``/proc/PID/environ``), and those it saw below the command (it
records the descendants, with their start times so a reused pid is never mistaken for one of
them, every second for the first minute, then every 5 s: a child that cleared its environment
is still caught). It sends each SIGTERM, then SIGKILL after 2 s, and exits. Linux only
(``/proc``); elsewhere ``start()`` does nothing. One watcher per process, however often
``start()`` is called.

>>> watcher = start()   # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.2
SCAN_S = (1.0, 5.0)  # descendants scanned every second for the first minute, then every 5 s
GRACE_S = 2.0

TOKEN = "STGR_REAPER_TOKEN"

_watchers: dict[int, subprocess.Popen] = {}


def start(pid: int | None = None) -> subprocess.Popen | None:
    """Watch ``pid`` (default: this process) and reap its descendants when it ends."""
    pid = pid or os.getpid()
    if pid in _watchers:
        return _watchers[pid]
    if not Path("/proc/self/stat").is_file():
        return None
    token = f"{pid}-{os.urandom(8).hex()}"
    os.environ[TOKEN] = token  # inherited by every process started from here on
    try:
        _watchers[pid] = subprocess.Popen(
            [sys.executable, "-S", str(Path(__file__).resolve()), str(pid), token],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return None  # a watcher is a courtesy; never the reason a build cannot start
    return _watchers[pid]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return fields[0].decode(), int(fields[1]), int(fields[19])


def _descendants(root: int, skip: int) -> dict[int, int]:
    """pid -> start time of every process below ``root`` now."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is not None and pid != skip:
            children.setdefault(stat[1], []).append((pid, stat[2]))
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        for pid, started in children.get(frontier.pop(), []):
            if pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _carrying(token: str, skip: int) -> dict[int, int]:
    """pid -> start time of every process whose environment holds ``TOKEN=token``."""
    marker = f"{TOKEN}={token}".encode() + b"\0"
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == skip:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue  # gone, or not ours to read
        stat = _stat(int(entry))
        if stat is not None and (b"\0" + environ + b"\0").find(b"\0" + marker) >= 0:
            found[int(entry)] = stat[2]
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[0] not in ("Z", "X")


def watch(target: int, token: str = "") -> None:
    first = _stat(target)
    if first is None:
        return
    started = first[2]
    known: dict[int, int] = {}
    me = os.getpid()
    begun = next_scan = time.monotonic()
    while _alive(target, started):
        now = time.monotonic()
        if now >= next_scan:
            known.update(_descendants(target, me))
            next_scan = now + (SCAN_S[0] if now - begun < 60 else SCAN_S[1])
        time.sleep(POLL_S)
    if token:
        known.update(_carrying(token, me))
    left = {pid: t for pid, t in known.items() if _alive(pid, t)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, t in left.items():
            if _alive(pid, t):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(_alive(pid, t) for pid, t in left.items()):
            time.sleep(0.05)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
