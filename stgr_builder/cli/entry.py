"""``main()``: the command line's entry, and how it ends: one line for a failure, a signal or a warning."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import warnings
from typing import NoReturn, TextIO

import typer

from stgr_builder import stopping
from stgr_builder.cli.app import DEBUG_FLAG, app, err_console, session
from stgr_builder.errors import StgrError, StgrWarning

#: errno -> what the user should do about it, for file-system failures of a command.
_OS_FIXES = {
    errno.ENOSPC: "free space there, or choose another --out; run the same command again to resume",
    errno.EDQUOT: "raise the quota or free space, or choose another --out; run the same command again to resume",
    errno.EROFS: "choose another --out",
    errno.EACCES: "no permission to write there: choose another --out, or fix the folder's permissions",
    errno.EPERM: "no permission to write there: choose another --out, or fix the folder's permissions",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower sharding.workers",
}


def _os_error_line(exc: OSError) -> str:
    """Every file-system failure of a command: what, where, and what to do (one line)."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and its permissions, or choose another location")
    return f"{reason}{where}: {fix}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _stopped_line(signum: int) -> str:
    """The one line a signal prints: what finished, what is pending, and to run again."""
    name = signal.Signals(signum).name
    if not session.writing:
        return f"stopped by {name}"
    from stgr_builder.annotate import pending_batches
    from stgr_builder.shards.writer import progress

    out = session.writing[0]
    done, total = progress(out)
    if total is None:
        finished = "before the build was planned (nothing built yet)"
    else:
        finished = f"{done} of {total} shards finished, {total - done} pending"
    requests, batches = pending_batches(out)
    if batches:
        finished += f" ({requests} requests in {batches} submitted batches, kept to collect)"
    return f"stopped by {name}: {out}: {finished}; run again to resume"


def _on_signal(signum: int) -> None:
    """On the stopping thread: take the progress bar down, print the one line."""
    for stop, watcher in session.bar:
        stop.set()
        watcher.join(1.0)
    leases = sys.modules.get("stgr_builder.storage.lease")
    if leases is not None:  # a build on a bucket: free its prefix (os._exit runs no finally)
        leases.release_held()
    try:
        line = _stopped_line(signum)
    except Exception:  # noqa: BLE001 - the folder half-written: the line without the counts
        line = f"stopped by {signal.Signals(signum).name}; run again to resume"
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _wait_if_stopping() -> None:
    """A signal is ending the process (``stopping``): its thread prints and exits; the main
    thread, whose work the signal broke, says nothing of its own."""
    if stopping.received() is not None:
        while True:
            time.sleep(1.0)


def _fail(message: str, code: int) -> NoReturn:
    _wait_if_stopping()
    err_console.print(f"error: {_one_line(message)}", markup=False, highlight=False, soft_wrap=True)
    if session.debug:
        import traceback

        traceback.print_exc()
    sys.exit(code)


#: Warnings printed in full; past them one line says that more were not shown.
_MAX_WARNINGS = 20
_warned = [0]
_show_other_warning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A ``StgrWarning`` as one line ``warning: ...`` (the first ``_MAX_WARNINGS``); others as Python shows them."""
    if not issubclass(category, StgrWarning):
        _show_other_warning(message, category, filename, lineno, file, line)
        return
    _warned[0] += 1
    if _warned[0] <= _MAX_WARNINGS:
        err_console.print(f"warning: {_one_line(str(message))}", markup=False, highlight=False, soft_wrap=True)
    elif _warned[0] == _MAX_WARNINGS + 1:
        err_console.print("warning: more warnings like these are not shown", markup=False, highlight=False)


def _take_debug(argv: list[str]) -> list[str]:
    """Remove ``--debug`` from anywhere on the command line (after ``--``, it is a value)."""
    head, sep, tail = (
        (argv[: argv.index("--")], ["--"], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [], [])
    )
    session.debug = DEBUG_FLAG in head
    return [arg for arg in head if arg != DEBUG_FLAG] + sep + tail


def main() -> None:
    args = _take_debug(sys.argv[1:])
    stopping.install(_on_signal)
    warnings.showwarning = _show_warning
    try:
        app(args=args, prog_name="stgr", standalone_mode=False)
        _wait_if_stopping()
    except StgrError as exc:
        _fail(str(exc), 2)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except typer.Exit as exc:
        _wait_if_stopping()
        sys.exit(exc.exit_code)
    except MemoryError:
        _fail("out of memory: lower sharding.workers, detector.batch or detector.imgsz", 2)
    except OSError as exc:
        _fail(_os_error_line(exc), 2)
    except Exception as exc:  # noqa: BLE001 - the contract is a one-line reason, not a traceback
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        _fail(f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)", 1)
