"""A sample's media, wherever it lives: a local file as it is, an object in a bucket through
range reads or a bounded local copy.

>>> media = MediaFiles(Path("/tmp/stgr-media"), max_bytes=2 << 30)
>>> location = media_location("s3://bucket/media", "clips/v1.mp4")   # 's3://bucket/media/clips/v1.mp4'
>>> remote_fingerprint(location)                       # doctest: +SKIP
'1048576:5d41402abc4b2a76b9719d911017c592'
>>> with media.local(location) as path:               # doctest: +SKIP
...     probe_video(path, "clips/v1.mp4")

What reads what:

- The **fingerprint** (``core.hashing``: size and three 64 KiB blocks) of an object is read by
  one ``HEAD`` and range requests, never the whole object, and equals the local file's: the stage
  keys, hence the rows and a resume from a local run's stage store, do not depend on where the
  media are. A sample whose stage results are stored costs these few ranges, not a download.
- The **probe** demuxes every packet of a video (it proves the file is whole and indexes its key
  frames: ``video/probe.py``), and the decoders read the GOPs they need, several times per video
  across shards; decord and OpenCV want a path. So an object that is probed or decoded is copied
  once into the **local cache**, and both read the copy.
- The **plan's media check** lists each folder once (``list_sizes``), not one request per file.

The local cache (``cache.local_dir``, at most ``cache.local_max_bytes`` bytes) is shared by the
threads and processes of one machine:

- every change to the folder (making room, reserving, publishing a copy, taking a lease) happens
  under an exclusive ``flock`` of ``<dir>/.lock``;
- a copy is downloaded to a hidden ``.part`` file, made its full size when reserved (so the
  folder's bytes never pass the bound while downloads run), then renamed: a reader never sees a
  partial copy;
- a reader holds a shared ``flock`` on the copy while it reads (a *lease*); eviction takes the
  least recently leased copies (their mtime) that it can lock exclusively without waiting, so
  a copy being read is never deleted under its reader;
- a ``.part`` file of a process that no longer runs is removed when room is made.

Credentials never pass through here: fsspec's filesystems read them from the environment and
their providers' standard chains.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from stgr_builder.core.files import cache_home
from stgr_builder.core.hashing import fingerprint_of, media_fingerprint
from stgr_builder.errors import StgrError
from stgr_builder.storage.location import filesystem, is_url

if TYPE_CHECKING:
    from stgr_builder.core.cache import BoundedCache
    from stgr_builder.models import CacheConfig

#: Default bound of the local media cache (``cache.local_max_bytes``).
DEFAULT_LOCAL_MAX_BYTES = 20 << 30
#: How long a copy waits for room while every other copy is being read, before the build stops
#: with an error naming ``cache.local_max_bytes``.
ROOM_WAIT_S = 600.0
#: Seconds a process trusts the size and version it read of an object (``remote_fingerprint``).
STAT_TTL_S = 300.0
_COPY_CHUNK = 4 << 20
_LOCK_NAME = ".lock"


def default_local_dir() -> Path:
    """``media/`` in the user's cache folder (``core.files.cache_home``)."""
    return cache_home() / "media"


def media_location(media_root: str, rel: str) -> str:
    """Where a media path relative to ``media_root`` lives: a URL under a URL root, else an
    absolute local path (lexical: symlinked media folders are legitimate).

    >>> media_location("s3://b/media/", "a/v.mp4"), media_location("/data", "a/v.mp4")
    ('s3://b/media/a/v.mp4', '/data/a/v.mp4')
    """
    if is_url(media_root):
        return media_root.rstrip("/") + "/" + rel.replace("\\", "/").lstrip("/")
    return os.path.abspath(os.path.join(media_root, rel))


def remote_stat(url: str) -> tuple[int, str]:
    """(size, version) of an object: the version is its ETag (or its modification time), so a
    replaced object is told from the old one. ``FileNotFoundError`` when it is not there."""
    fs, path = filesystem(url)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise FileNotFoundError(f"{url}: a folder, not a file")
    version = next((str(info[k]) for k in ("ETag", "etag", "md5Hash", "LastModified", "mtime") if info.get(k)), "")
    return int(info.get("size") or 0), version


def cached_stat(url: str, memo: BoundedCache[Any] | None = None) -> tuple[int, str]:
    """``remote_stat``, asked again only after ``STAT_TTL_S`` when a ``memo`` keeps it: every
    sample's key needs its media's fingerprint, and a video has many samples (one ``HEAD`` each
    is minutes over 100,000 samples)."""
    now = time.monotonic()
    known = memo.get(("remote-stat", url)) if memo is not None else None
    if known is not None and now - known[2] <= STAT_TTL_S:
        return known[0], known[1]
    size, version = remote_stat(url)
    if memo is not None:
        memo.put(("remote-stat", url), (size, version, now))
    return size, version


def remote_fingerprint(url: str, memo: BoundedCache[Any] | None = None, local_copy: Path | None = None) -> str:
    """``core.hashing.media_fingerprint`` of an object, from one ``HEAD`` and range requests
    (the same value as for the same bytes on a local disk), or from ``local_copy`` (its copy in
    the local cache: no request). Raises ``OSError``."""
    size, version = cached_stat(url, memo)
    stamp = ("remote", url, size, version)
    if memo is not None and (known := memo.get(stamp)) is not None:
        return known
    if local_copy is not None and local_copy.stat().st_size == size:
        found = media_fingerprint(local_copy)
    else:
        fs, path = filesystem(url)
        found = fingerprint_of(size, lambda start, end: fs.cat_file(path, start=start, end=end))
    if memo is not None:
        memo.put(stamp, found)
    return found


def list_sizes(locations: Iterable[str]) -> dict[str, int]:
    """The size of each of ``locations`` (URLs) that exists, from one listing per folder (a
    plan checks 100,000 files: one request each would take minutes). Absent ones are left out.

    >>> list_sizes(["s3://b/m/v1.mp4", "s3://b/m/gone.mp4"])  # doctest: +SKIP
    {'s3://b/m/v1.mp4': 1048576}
    """
    by_folder: dict[str, list[str]] = defaultdict(list)
    for url in locations:
        by_folder[url.rsplit("/", 1)[0]].append(url)
    found: dict[str, int] = {}
    for folder, urls in by_folder.items():
        fs, path = filesystem(folder)
        try:
            entries = fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            continue
        sizes = {
            posixpath.basename(entry["name"].rstrip("/")): int(entry.get("size") or 0)
            for entry in entries
            if entry.get("type") != "directory"
        }
        for url in urls:
            name = url.rsplit("/", 1)[1]
            if name in sizes:
                found[url] = sizes[name]
    return found


class LocalCache:
    """Local copies of remote objects in ``root``, at most ``max_bytes`` in all, evicted least
    recently used first; safe across threads and processes (module docstring).

    >>> cache = LocalCache(Path("/tmp/stgr-media"), max_bytes=1 << 30)
    >>> with cache.lease("s3://bucket/media/v1.mp4") as path:   # doctest: +SKIP
    ...     av.open(str(path))
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_LOCAL_MAX_BYTES):
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self.downloads = 0  # copies this instance made (tests, benchmarks)
        self._count_lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self, url: str, stat: tuple[int, str] | None = None) -> Iterator[Path]:
        """A local copy of ``url``, kept while the ``with`` block reads it. ``stat``: its size
        and version when the caller knows them (``cached_stat``), else asked."""
        size, version = stat if stat is not None else remote_stat(url)
        if size > self.max_bytes:
            raise StgrError(
                f"{url}: {size} bytes do not fit the local media cache (cache.local_max_bytes: {self.max_bytes})"
            )
        suffix = posixpath.splitext(url)[1][:16]
        path = self.root / (hashlib.sha256(f"{url}\0{size}\0{version}".encode()).hexdigest()[:40] + suffix)
        held, part = self._take(path, size)
        if held is None:
            try:
                self._download(url, part, size)
                with self._locked():
                    os.replace(part, path)
                    held = self._pin(path)
            finally:
                part.unlink(missing_ok=True)
            with self._count_lock:
                self.downloads += 1
        try:
            yield path
        finally:
            held.close()  # the shared lock goes with the descriptor

    def bytes_used(self) -> int:
        """Bytes of every file in the folder (copies and reserved downloads)."""
        return sum(size for _, size, _ in self._entries())

    def _take(self, path: Path, size: int) -> tuple[IO[bytes] | None, Path]:
        """A lease on the copy at ``path`` if there is one (its mtime set to now: recently
        used); else room made for ``size`` bytes and a ``.part`` of that size reserved for the
        caller's download: ``(None, part)``."""
        deadline = time.monotonic() + ROOM_WAIT_S
        part = self.root / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        while True:
            with self._locked():
                if path.is_file():
                    held = self._pin(path)
                    os.utime(path)
                    return held, part
                if self._make_room(size):
                    with open(part, "wb") as reserved:
                        reserved.truncate(size)  # counted at its full size from now on
                    return None, part
            if time.monotonic() > deadline:
                raise StgrError(
                    f"{self.root}: no room for {size} bytes while every copy is being read "
                    f"(cache.local_max_bytes: {self.max_bytes}); raise it"
                )
            time.sleep(0.05)  # copies in use are released when their readers finish

    def _download(self, url: str, part: Path, size: int) -> None:
        fs, rpath = filesystem(url)
        # The .part was made ``size`` bytes long when room was reserved; written in place. The
        # size given spares the filesystem its own HEAD; each read is one ranged GET.
        with (
            fs.open(rpath, "rb", block_size=_COPY_CHUNK, size=size, cache_type="none") as source,
            open(part, "r+b") as target,
        ):
            shutil.copyfileobj(source, target, _COPY_CHUNK)
            written = target.tell()
        if written != size:
            raise OSError(f"{url}: {written} bytes read of {size}")

    def _make_room(self, size: int) -> bool:
        """Under the folder lock: evict until ``size`` more bytes fit. False when the copies in
        use (and live downloads) leave no room."""
        entries = self._entries()
        total = sum(entry_size for _, entry_size, _ in entries)
        for path, entry_size, _ in sorted(entries, key=lambda entry: entry[2]):
            if total + size <= self.max_bytes:
                break
            if _evictable(path):
                total -= entry_size
        return total + size <= self.max_bytes

    def _entries(self) -> list[tuple[Path, int, float]]:
        """(path, size, mtime) of every copy and ``.part`` in the folder."""
        found = []
        with os.scandir(self.root) as listing:
            for entry in listing:
                if entry.name == _LOCK_NAME or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((Path(entry.path), stat.st_size, stat.st_mtime))
        return found

    def _pin(self, path: Path) -> IO[bytes]:
        handle = open(path, "rb")  # noqa: SIM115 - held for the lease, closed by its caller
        fcntl.flock(handle, fcntl.LOCK_SH)  # never blocks: evictors hold the folder lock
        return handle

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        # A descriptor of its own per holder: flock excludes threads of one process as well.
        with open(self.root / _LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _evictable(path: Path) -> bool:
    """Remove ``path`` unless it is being read (or is a live download); True when removed."""
    if path.name.endswith(".part"):
        if _pid_alive(path.name.rsplit(".", 3)[-3]):
            return False
        path.unlink(missing_ok=True)
        return True
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return True
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a reader holds it
        path.unlink(missing_ok=True)
    return True


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class MediaFiles:
    """How the probe and the decoders reach media: a local path as it is, a URL through the
    bounded local cache. Picklable (it holds settings only; the cache lives on disk).

    >>> media = MediaFiles()                             # the default cache folder and bound
    >>> with media.local("/data/v1.mp4") as path:        # doctest: +SKIP
    ...     path
    PosixPath('/data/v1.mp4')
    """

    def __init__(self, local_dir: Path | None = None, max_bytes: int = DEFAULT_LOCAL_MAX_BYTES):
        self.local_dir = Path(local_dir).expanduser() if local_dir is not None else default_local_dir()
        self.max_bytes = max_bytes
        self._cache: LocalCache | None = None

    @classmethod
    def of(cls, cache: CacheConfig) -> MediaFiles:
        """The media access a config's ``cache`` section asks for. A relative ``local_dir`` is
        relative to the working directory of each process: the folder is a machine's own, not
        the dataset's, and a worker on another machine has its own."""
        local_dir = None if cache.local_dir is None else Path(cache.local_dir).expanduser().absolute()
        return cls(local_dir, cache.local_max_bytes)

    @property
    def cache(self) -> LocalCache:
        if self._cache is None:
            self._cache = LocalCache(self.local_dir, self.max_bytes)
        return self._cache

    @contextlib.contextmanager
    def local(self, location: str | Path, stat: tuple[int, str] | None = None) -> Iterator[Path]:
        """A local path to read ``location`` from while the block runs (``stat``: see
        ``LocalCache.lease``)."""
        if not is_url(location):
            yield Path(location)
            return
        with self.cache.lease(str(location), stat) as path:
            yield path

    def __getstate__(self) -> dict:
        return {"local_dir": self.local_dir, "max_bytes": self.max_bytes, "_cache": None}
