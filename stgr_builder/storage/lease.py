"""One build at a time on a bucket prefix: a lease taken by a conditional create.

An object store has no ``flock``. The lock of ``s3://bucket/ds`` is a folder of lease objects,
``s3://bucket/ds/.stgr-lock/<generation>.json``, each holding its owner (a random id, the pid
and host for people) and an expiry. The holder is the newest generation:

- to take the lock, a build creates the next generation with a conditional create (S3's
  ``If-None-Match: *``): of two builds racing for one generation, exactly one succeeds; the
  other looks again and refuses, naming the holder;
- a live holder renews its expiry from a heartbeat thread (every third of the lease);
- a holder that crashed stops renewing: once its lease has expired, a successor takes over by
  creating the next generation (its predecessor's are then removed). On the holder's own
  machine (same boot and pid namespace, Linux) a holder whose process is gone is taken over at
  once: a build killed or stopped with Ctrl-C is resumed without waiting for its lease;
- a holder that finds a newer generation has lost the lock (it stalled past its lease): every
  commit checks first (``check``) and stops with one line.

The lease lasts ``STGR_LEASE_S`` seconds (default 60): how long a crashed build keeps the prefix.
Expiries are wall-clock times, so the machines' clocks must agree to well within a lease.

>>> lease = Lease("s3://bucket/ds").acquire()   # doctest: +SKIP
>>> lease.release()                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stgr_builder.errors import StgrError
from stgr_builder.storage.location import filesystem
from stgr_builder.storage.mirror import LOCK_NAME

DEFAULT_LEASE_S = 60.0


def machine() -> str | None:
    """This process's pid namespace on this boot (Linux), where a pid names one process; None
    elsewhere (a holder is then known dead only by its lease)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def gone(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` ran on this machine (``machine``) and its process no longer exists."""
    here = machine()
    if here is None or holder.get("machine") != here or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def live(holder: dict[str, Any], owner: str) -> bool:
    """Whether ``holder``'s lease keeps ``owner`` out: another owner's, unexpired, not gone."""
    expires = float(holder.get("expires", time.time() + 1))
    return holder.get("owner") != owner and expires > time.time() and not gone(holder)


def lease_seconds() -> float:
    """How long a lease lasts unrenewed (``STGR_LEASE_S``)."""
    return float(os.environ.get("STGR_LEASE_S") or DEFAULT_LEASE_S)


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def describe(holder: dict[str, Any]) -> str:
    """``pid 12 on host-a since ..., lease until ...``."""
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}, "
        f"lease until {_iso(float(holder.get('expires', 0)))}"
    )


#: The leases this process holds: a signal ends the process with ``os._exit`` (``stopping.py``),
#: which runs no ``finally``; the CLI releases them first (``release_held``).
_HELD: set[Lease] = set()
_HELD_LOCK = threading.Lock()


def release_held(timeout_s: float = 2.0) -> None:
    """Release this process's leases, waiting at most ``timeout_s`` for the store: a build
    stopped by a signal frees its prefix for a successor on any machine at once."""

    def release_all() -> None:
        with _HELD_LOCK:
            leases = list(_HELD)
        for lease in leases:
            lease.release()

    worker = threading.Thread(target=release_all, name="stgr-lease-release", daemon=True)
    worker.start()
    worker.join(timeout_s)


class Lease:
    """The lease on ``url`` of one build (``owner``), held from ``acquire`` to ``release``."""

    def __init__(self, url: str, owner: str | None = None, seconds: float | None = None):
        self.url = url.rstrip("/")
        self.owner = owner or uuid.uuid4().hex
        self.seconds = seconds if seconds is not None else lease_seconds()
        self.generation: int | None = None
        self.started = _iso(time.time())
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._fs: Any = None

    def _connect(self) -> tuple[Any, str]:
        """The filesystem and the lock's folder on it."""
        if self._fs is None:
            self._fs, root = filesystem(self.url, fresh=True)
            self._folder = f"{root.rstrip('/')}/{LOCK_NAME}"
        return self._fs, self._folder

    @property
    def fs(self) -> Any:
        return self._connect()[0]

    def _path(self, generation: int) -> str:
        return f"{self._connect()[1]}/{generation:010d}.json"

    def generations(self) -> list[int]:
        """The lease generations in the bucket, oldest first."""
        fs, folder = self._connect()
        try:
            names = fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        found = (name.rsplit("/", 1)[-1].removesuffix(".json") for name in names)
        return sorted(int(name) for name in found if name.isdigit())

    def holder(self) -> tuple[int, dict[str, Any]] | None:
        """The newest generation and its record (None: no lease, or it just vanished)."""
        for generation in reversed(self.generations()):
            try:
                return generation, json.loads(self.fs.cat_file(self._path(generation)))
            except FileNotFoundError:
                continue  # released or replaced while we looked: the next older one, or none
            except ValueError:
                return generation, {}  # unreadable: a holder that counts as live until it expires
        return None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "machine": machine(),
                "started": self.started,
                "expires": time.time() + self.seconds,
            }
        ).encode()

    def acquire(self) -> Lease:
        """Take the lease, or raise ``StgrError`` naming the live holder; starts the heartbeat."""
        for _ in range(5):
            current = self.holder()
            if current is not None:
                _, record = current
                if live(record, self.owner):
                    raise StgrError(
                        f"{self.url} is being built by {describe(record)}; wait for it to finish (a build that "
                        f"crashed keeps it until its lease expires)"
                    )
            generation = current[0] + 1 if current is not None else 0
            try:
                self.fs.pipe_file(self._path(generation), self._record(), mode="create")
            except FileExistsError:
                continue  # another build took this generation first: look again
            if self.generations()[-1] != generation:  # we looked at a listing gone stale
                self.fs.rm_file(self._path(generation))
                continue
            self.generation = generation
            for older in self.generations():
                if older < generation:
                    self._remove(older)
            self._start_heartbeat()
            with _HELD_LOCK:
                _HELD.add(self)
            return self
        raise StgrError(f"{self.url}: the lock is changing hands too fast to take; run the command again")

    def check(self) -> None:
        """Raise ``StgrError`` unless this owner still holds the lease (before each commit)."""
        current = self.holder()
        if current is None or current[1].get("owner") != self.owner:
            holder = describe(current[1]) if current else "nobody"
            raise StgrError(
                f"{self.url}: this build lost its lock (now held by {holder}): it stalled past its lease of "
                f"{self.seconds:g} s; nothing more is committed"
            )

    def renew(self) -> bool:
        """Push the expiry forward; False when a newer generation took over."""
        if self.generation is None or self.generations()[-1:] != [self.generation]:
            return False
        self.fs.pipe_file(self._path(self.generation), self._record())
        return True

    def release(self) -> None:
        """Stop renewing and remove this build's lease (the next build takes generation 0)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.generation is not None:
            self._remove(self.generation)
            self.generation = None
        with _HELD_LOCK:
            _HELD.discard(self)

    def _remove(self, generation: int) -> None:
        try:
            self.fs.rm_file(self._path(generation))
        except FileNotFoundError:
            pass

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="stgr-lease", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    return  # lost: the next commit's ``check`` says so
            except Exception:  # noqa: BLE001 (a failed renewal is tried again next beat)
                continue
