"""SIGINT and SIGTERM end a command within a moment, whatever its threads are doing.

A Python signal handler runs only in the main thread, between bytecodes. During a build the
main thread waits inside Prefect (which swaps in its own SIGTERM handler for a flow run), the
LLM requests sleep on another thread's event loop, and the preparation pool's workers share the
terminal's process group: Ctrl-C raised a ``KeyboardInterrupt`` that Prefect swallowed (exit 0,
no manifest), the pool's workers printed tracebacks, and SIGTERM did nothing.

``install(on_signal)`` instead has the interpreter's C-level handler write each signal's number
to a socket (``signal.set_wakeup_fd``) that a daemon thread reads: that thread calls
``on_signal(signum)`` (the CLI prints its one line there) and ends the process with
``os._exit(128 + signum)`` (130, 143), whatever the main thread is doing. The C-level handler
stays in place when Prefect swaps the Python-level one, so the wakeup still comes. Ending with
``os._exit`` loses nothing: every file a build writes is written whole (temporary file, then
rename) and a killed build resumes byte-identically; the command's children (Prefect's server,
Dask's workers, the preparation pool) are stopped by ``reaper.py`` and their orphan guards.

>>> install(lambda signum: print("stopping"))   # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

#: Seconds ``on_signal`` may take before the process ends without it.
ANNOUNCE_S = 3.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []
_sockets: list[socket.socket] = []


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + the signal's number.

    >>> exit_status(signal.SIGINT), exit_status(signal.SIGTERM)
    (130, 143)
    """
    return 128 + signum


def received() -> int | None:
    """The signal that is ending this process, or None."""
    return _received[0] if _received else None


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: nothing (the wakeup thread acts), but the signal no longer
    raises ``KeyboardInterrupt`` or ends the process before the line is printed."""


def _end(signum: int, on_signal: Callable[[int], None]) -> None:
    """Announce (bounded by ``ANNOUNCE_S``), flush, and end the process."""
    _received.append(signum)
    announcer = threading.Thread(target=on_signal, args=(signum,), daemon=True, name="stgr-stop-announce")
    announcer.start()
    announcer.join(ANNOUNCE_S)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_status(signum))


def _listen(reader: socket.socket, on_signal: Callable[[int], None]) -> None:
    while True:
        try:
            data = reader.recv(64)
        except InterruptedError:
            continue
        except OSError:
            return
        for signum in data:
            if signum in SIGNALS:
                _end(signum, on_signal)
                return


def _quiet_resource_tracker() -> None:
    quiet = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if quiet not in current.split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{quiet}" if current else quiet


def install(on_signal: Callable[[int], None]) -> bool:
    """From the main thread: SIGINT and SIGTERM call ``on_signal(signum)`` on a daemon thread,
    then end the process with ``128 + signum``. False (nothing installed) off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    # multiprocessing's resource tracker (a child) outlives a process ended this way and warns
    # of its "leaked semaphores" (the pool's queues'): nothing is lost, so it is told not to.
    _quiet_resource_tracker()
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _sockets[:] = [reader, writer]  # kept open for the life of the process
    for signum in SIGNALS:
        signal.signal(signum, _ignore)
    threading.Thread(target=_listen, args=(reader, on_signal), daemon=True, name="stgr-stop").start()
    return True


__all__ = ["exit_status", "install", "received"]
