"""Who may write a dataset folder: one build at a time, and only its own folder.

A build (or a re-annotation) holds an exclusive lock on its output folder while it runs: an
``fcntl.flock`` on ``<out>/.stgr-lock``, which the kernel releases when the process ends, however
it ends (a SIGKILL never leaves the folder locked). A second build of the same folder refuses at
once with one line naming the holder (pid, host, start time), read from the lock file.

A build writes only into an empty (or missing) folder or one holding a stgr dataset of the same
build id (``_progress/owner.json``, else the manifest's, else a shard record's). Another build
id, or files a stgr build does not make, are refused; ``--overwrite`` is the explicit way to
build there anyway. Even then nothing is deleted that the folder's manifest or shard records do
not list (``shards.writer.prune_orphans``): foreign files stay where they are. Shard files
(``stgr_cot/part-*.parquet``, ...) that no record lists are refused even with ``--overwrite``:
every reader would take them as rows of the dataset. So are the top-level files a build
replaces (``manifest.json``, ``plan.json``, ``README.md``) in a folder holding no stgr record:
a name a build also writes is not the build's own until a record says so.

>>> with claim_folder(Path("outputs/run1"), build_id="3f9a0c1d2e4b"):   # doctest: +SKIP
...     in_process(job, resources)   # what executor.run does, through job.claim()
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stgr_builder.core.arrow import DATASETS
from stgr_builder.core.files import atomic_write_text, parquet_problem
from stgr_builder.core.layout import CACHE_DIR, MANIFEST, PLAN, PROGRESS_DIR
from stgr_builder.errors import StgrError

LOCK_FILE = ".stgr-lock"
OWNER_FILE = "owner.json"
#: What a stgr build (or the CLI around it) puts at the top of a dataset folder.
KNOWN_ENTRIES = {
    MANIFEST,
    PLAN,
    "README.md",
    PROGRESS_DIR,
    str(CACHE_DIR),
    "_recipe",
    "_source",
    "stgr_cot",
    "stgr_rl",
    "rejects",
    "kfs",
    LOCK_FILE,
}
#: Top-level files a build writes whole (replacing what is there): its own only in a folder
#: that holds a stgr record (owner, manifest or shard record).
REPLACED_FILES = (MANIFEST, PLAN, "README.md")


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.stgr-lock``, held until ``release`` or the process ends."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StgrError(
                f"{self.folder} is being built by {holder}; wait for it to finish (the lock goes with that process)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ).encode(),
            0,
        )
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    # The holder writes its name right after taking the lock: give it a moment to appear.
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "another process (it is starting)"


def folder_build_id(folder: Path) -> str | None:
    """The build id of the dataset in ``folder``: its owner record, else its manifest's, else a
    shard record's; None when it holds none."""
    folder = Path(folder)
    candidates = [
        folder / PROGRESS_DIR / OWNER_FILE,
        folder / MANIFEST,
        *sorted((folder / PROGRESS_DIR).glob("shard-*.json")),
    ]
    for path in candidates:
        try:
            found = json.loads(path.read_text(encoding="utf-8")).get("build_id")
        except (OSError, ValueError, AttributeError):
            continue
        if found:
            return str(found)
    return None


def foreign_entries(folder: Path) -> list[str]:
    """Top-level names in ``folder`` that no stgr build makes (our hidden temp files aside)."""
    try:
        names = sorted(entry.name for entry in Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        name for name in names if name not in KNOWN_ENTRIES and not (name.startswith(".") and name.endswith(".tmp"))
    ]


def check_folder(folder: Path, build_id: str, overwrite: bool = False) -> None:
    """Refuse (``StgrError``, one line) a folder holding another build or foreign files,
    unless ``overwrite``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StgrError(f"--out {folder} is a file, not a folder")
    owner = folder_build_id(folder)
    if owner != build_id:
        # Shard files no record lists would be read as rows of this dataset (readers take every
        # part-*.parquet), and they are not ours to delete: refused, even with --overwrite. (A
        # build of this id may have left some of its own, killed while writing: it rewrites them.)
        strays = unlisted_shards(folder)
        if strays:
            raise StgrError(
                f"{folder} holds shard files no stgr record lists ({', '.join(strays[:3])}"
                f"{' ...' if len(strays) > 3 else ''}): readers would take them as rows; move them "
                f"away or give another --out"
            )
    check_unlisted_broken_shards(folder)  # this build's folder too: it would not rewrite them
    if owner is None:
        unrecorded = [name for name in REPLACED_FILES if (folder / name).exists()]
        if unrecorded:
            raise StgrError(
                f"{folder} holds {', '.join(unrecorded)} but no stgr record lists them: a build would replace "
                f"them (even with --overwrite it does not); move them away or give another --out"
            )
    if overwrite:
        return
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StgrError(
            f"{folder} holds files a stgr build did not make ({shown}): give an empty or new --out, "
            f"or pass --overwrite to build there anyway (nothing of those files is deleted)"
        )
    if owner is not None and owner != build_id:
        raise StgrError(
            f"{folder} holds build {owner}, not this config's build {build_id}: give another --out, "
            f"or pass --overwrite to replace it"
        )


def check_unlisted_broken_shards(folder: Path) -> None:
    """Refuse (one line, before any work) a shard file that is no Parquet file and that no
    record lists: the build would not rewrite it (not its own), and every reader of the finished
    dataset would fail on it. A listed one is the build's own: its shard is done again (the
    checksum no longer matches). Records are read only when a broken file is found."""
    folder = Path(folder)
    broken = {
        path.relative_to(folder).as_posix(): problem
        for dataset in DATASETS
        for path in sorted((folder / dataset).glob("part-*.parquet"))
        if (problem := parquet_problem(path)) is not None
    }
    for name in unlisted_shards(folder) if broken else []:
        if name in broken:
            raise StgrError(
                f"{folder / name} is {broken[name]} and no stgr record lists it: move it away (readers take every "
                f"part-*.parquet as rows), then run the build again"
            )


def unlisted_shards(folder: Path) -> list[str]:
    """``part-*.parquet`` files of the dataset folders that neither the manifest nor a shard
    record (nor the list a shard writes before its files) lists (relative paths)."""
    folder = Path(folder)
    listed: set[str] = set()
    for path in [
        folder / MANIFEST,
        *sorted((folder / PROGRESS_DIR).glob("shard-*.json")),
        *sorted((folder / PROGRESS_DIR).glob("writing-*.json")),
    ]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            listed |= {f["path"] for f in data.get("shards" if path.name == MANIFEST else "files", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    found = [
        p.relative_to(folder).as_posix()
        for dataset in DATASETS
        for p in sorted((folder / dataset).glob("part-*.parquet"))
    ]
    return [p for p in found if p not in listed]


@contextmanager
def claim_folder(folder: Path, build_id: str, overwrite: bool = False) -> Iterator[FolderLock]:
    """Check the folder is this build's to write, lock it, record the owner; the lock is held
    for the ``with`` block (and dies with the process)."""
    folder = Path(folder)
    check_folder(folder, build_id, overwrite)
    lock = FolderLock(folder).acquire()
    try:
        check_folder(folder, build_id, overwrite)  # again, under the lock: another may have just claimed it
        owner = folder / PROGRESS_DIR / OWNER_FILE
        if folder_build_id(folder) != build_id or not owner.is_file():
            atomic_write_text(owner, json.dumps({"build_id": build_id}))
        yield lock
    finally:
        lock.release()


@contextmanager
def locked_folder(folder: Path) -> Iterator[FolderLock]:
    """The lock alone (a re-annotation checks its folder itself)."""
    lock = FolderLock(Path(folder)).acquire()
    try:
        yield lock
    finally:
        lock.release()
