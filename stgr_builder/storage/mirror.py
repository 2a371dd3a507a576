"""A local folder kept in step with a prefix on object storage, one file at a time.

A build on a URL runs on a local *staging* copy (every stage, the shard writer and the locks
write local files, renamed whole) and a ``Mirror`` copies what changed between it and the
bucket. An object store renames nothing, but a PUT is whole or absent: what the mirror uploads
is never half an object; the order of the uploads is what makes a commit (``output.py``).

What was last synced is kept beside the copy (``objects.json``: each file's size, mtime and
MD5), so a pull downloads only objects whose ETag (S3's MD5 of a single-part upload) differs
from the local file's, and a push uploads only files changed since.

>>> mirror = Mirror("s3://bucket/ds", Path("~/.cache/stgr-builder/staging/ab12/ds"))  # doctest: +SKIP
>>> mirror.pull()                      # the copy becomes what the bucket holds   # doctest: +SKIP
>>> mirror.push(lambda rel: rel.startswith("stgr_cot/"))                         # doctest: +SKIP
['stgr_cot/part-00000.parquet']

A copy need not hold the whole prefix: ``pull(scope=[...])`` lists and syncs only some folders
(``"_progress/"``) and files (``"plan.json"``), leaving the rest of the copy alone, and
``fetch`` brings single objects on demand (a worker's stage entries, key frames and LLM replies
of its own samples), a missing one being a plain miss:

>>> mirror.pull(scope=["plan.json", "_progress/"])                              # doctest: +SKIP
['_progress/plan.json', 'plan.json']
>>> mirror.fetch(["_cache/stages/probe/3f/3f9a.json", "kfs/no/such.jpg"])       # doctest: +SKIP
['_cache/stages/probe/3f/3f9a.json']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from stgr_builder.core.files import atomic_write_bytes, atomic_write_text, temp_path
from stgr_builder.core.layout import BUDGET_DIR
from stgr_builder.storage.location import filesystem

#: The lock: a local ``flock`` file in the copy, a folder of lease objects in the bucket
#: (``lease.py``); never mirrored either way.
LOCK_NAME = ".stgr-lock"
#: What was last synced, beside the copy (not in it).
INDEX_FILE = "objects.json"
_TEMP = re.compile(r"(^|/)\..+\.tmp$")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _etag(info: dict[str, Any]) -> str:
    """An object's content tag: S3's ETag (the MD5 of a single-part upload), else nothing a
    local MD5 can match (the object is then downloaded again: correct, only slower)."""
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


class Mirror:
    """The staging copy ``local`` of the objects under ``url``.

    Safe to share between the threads of one process (one sync at a time); each process of a
    build gets its own when the mirror is pickled (no filesystem or lock travels with it)."""

    def __init__(self, url: str, local: Path, index: Path | None = None):
        self.url = url.rstrip("/")
        self.local = Path(local)
        self.index_path = index if index is not None else self.local.parent / INDEX_FILE
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._fs: Any = None
        self._index: dict[str, list] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "local": self.local, "index_path": self.index_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def _connect(self) -> tuple[Any, str]:
        if self._fs is None:
            self._fs, self._root = filesystem(self.url, fresh=True)
        return self._fs, self._root

    @property
    def fs(self) -> Any:
        return self._connect()[0]

    def remote(self, rel: str) -> str:
        """The object path (on ``fs``) of a relative path."""
        return f"{self._connect()[1].rstrip('/')}/{rel}"

    # -- what is where ----------------------------------------------------------------------

    def remote_objects(self, scope: Sequence[str] | None = None) -> dict[str, str]:
        """The objects under the prefix but those never synced (``_never_synced``): relative
        path -> content tag. With
        ``scope`` (folders ending in ``/``, files), only those: each folder is listed whole,
        each file found by a listing of its own folder (one listing per folder, not per file)."""
        if scope is None:
            return self._found("")
        objects: dict[str, str] = {}
        for folder in sorted({rel for rel in scope if rel.endswith("/")}):
            objects.update(self._found(folder))
        files = {rel for rel in scope if not rel.endswith("/")}
        for parent in sorted({_parent(rel) for rel in files}):
            listed = self._listed(parent)
            objects.update({rel: tag for rel, tag in listed.items() if rel in files})
        return objects

    def _found(self, folder: str) -> dict[str, str]:
        """Every object under ``folder`` (``""``: the prefix), recursively."""
        return self._objects(lambda path: self.fs.find(path, detail=True), folder)

    def _listed(self, folder: str) -> dict[str, str]:
        """The objects directly in ``folder`` (``""``: the prefix's top), not in its subfolders."""
        return self._objects(lambda path: {info["name"]: info for info in self.fs.ls(path, detail=True)}, folder)

    def _objects(self, listing: Callable[[str], dict[str, Any]], folder: str) -> dict[str, str]:
        root = self.remote("").rstrip("/")
        try:
            found = listing(self.remote(folder).rstrip("/"))
        except FileNotFoundError:
            return {}
        objects = {}
        for path, info in found.items():
            rel = path[len(root) + 1 :] if path.startswith(root + "/") else None
            if rel and info.get("type", "file") == "file" and not _never_synced(rel):
                objects[rel] = _etag(info)
        return objects

    def local_files(self) -> list[str]:
        """Every file of the copy (relative, sorted) but those never synced and the writer's temp files."""
        if not self.local.is_dir():
            return []
        found = (p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file())
        return sorted(rel for rel in found if not _never_synced(rel) and not _TEMP.search(rel))

    # -- bucket -> copy ---------------------------------------------------------------------

    def pull(self, keep: Callable[[str], bool] = lambda rel: True, scope: Sequence[str] | None = None) -> list[str]:
        """Make the copy hold what the bucket holds (the objects ``keep`` selects): download
        what differs, remove local files the bucket lacks. Returns what was downloaded.

        ``scope`` (folders ending in ``/``, files): only those are listed and synced; local
        files outside it are left as they are (a worker's copy keeps what it fetched)."""
        with self._lock:
            wanted = {rel: tag for rel, tag in self.remote_objects(scope).items() if keep(rel)}
            index = self._loaded()
            for rel in self.local_files():
                if rel not in wanted and in_scope(rel, scope):
                    (self.local / rel).unlink(missing_ok=True)
                    index.pop(rel, None)
            fetched = [rel for rel, tag in sorted(wanted.items()) if not self._holds(rel, tag)]
            self._download(fetched)
            self._save()
            return fetched

    def fetch(self, rels: Iterable[str]) -> list[str]:
        """Download the named objects the copy lacks, concurrently (fsspec's batches), each
        written whole under its name and noted as synced; an object the bucket lacks is a
        miss, not an error. Returns what was downloaded (sorted).

        The read-through of a scoped copy (``pull(scope=...)``): a worker asks for the stage
        entries, key frames and LLM replies of its own samples once it knows their names."""
        wanted = sorted({rel for rel in rels if not (self.local / rel).is_file()})
        if not wanted:
            return []
        paths = {self.remote(rel): rel for rel in wanted}
        # "return": each missing object comes back as its FileNotFoundError (a miss); any other
        # error (the store after its retries) is raised, never taken for a miss.
        found = self.fs.cat(list(paths), on_error="return")  # a list in: a mapping out
        with self._lock:
            fetched = []
            for path, data in sorted(found.items()):
                if isinstance(data, FileNotFoundError):
                    continue
                if isinstance(data, BaseException):
                    raise data
                rel = paths[path]
                atomic_write_bytes(self.local / rel, data, durable=False)
                self._record(rel)
                fetched.append(rel)
            if fetched:
                self._save()
            return fetched

    def _holds(self, rel: str, tag: str) -> bool:
        """Whether the local file is the object tagged ``tag`` (unchanged since a sync that saw it)."""
        entry = self._loaded().get(rel)
        return bool(tag) and entry is not None and entry[2] == tag and self._unchanged(rel, entry)

    def _download(self, rels: list[str]) -> None:
        """Download ``rels`` concurrently (fsspec's batches), each to a temporary name renamed
        whole: a pull cut short leaves no half file under a real name."""
        temps = {rel: temp_path(self.local / rel) for rel in rels}
        for temp in temps.values():
            temp.parent.mkdir(parents=True, exist_ok=True)
        try:
            if rels:
                self.fs.get([self.remote(rel) for rel in rels], [str(temps[rel]) for rel in rels])
            for rel in rels:
                os.replace(temps[rel], self.local / rel)
                self._record(rel)
        finally:
            for temp in temps.values():
                temp.unlink(missing_ok=True)

    # -- copy -> bucket ---------------------------------------------------------------------

    def push(self, include: Callable[[str], bool]) -> list[str]:
        """Upload the local files ``include`` selects that changed since they were last synced
        (concurrently: a caller orders commits by separate pushes); returns them. An upload is
        one PUT (or a multipart upload completed last): the object appears whole or not at all.

        Each file's size, mtime and MD5 are noted before its upload: a file rewritten meanwhile
        no longer matches them, so the next push uploads it again, never leaving it stale."""
        with self._lock:
            return self._push(self._changed(include))

    def push_files(self, rels: list[str]) -> list[str]:
        """``push`` of the named files (those changed since last synced), without walking the
        copy: a commit names what it found changed, or the one record it commits."""
        with self._lock:
            return self._push([rel for rel in rels if not self._synced(rel)])

    def _push(self, rels: list[str]) -> list[str]:
        # the caller holds the lock
        noted = {rel: entry for rel in rels if (entry := self._fingerprint(rel))}
        try:
            self._upload(list(noted))  # concurrently: fsspec's batches
        except FileNotFoundError:
            # One was removed since it was listed (an intent once its record is written):
            # one at a time, leaving out what is gone.
            noted = {rel: entry for rel, entry in noted.items() if self._upload_one(rel)}
        self._loaded().update(noted)
        self._save()
        return list(noted)

    def _upload(self, rels: list[str]) -> None:
        if rels:
            self.fs.put([str(self.local / rel) for rel in rels], [self.remote(rel) for rel in rels])

    def _upload_one(self, rel: str) -> bool:
        """Upload one file; False when it is gone."""
        try:
            self._upload([rel])
        except FileNotFoundError:
            if (self.local / rel).exists():
                raise
            return False
        return True

    def changed(self, include: Callable[[str], bool] = lambda rel: True) -> list[str]:
        """The local files ``include`` selects that changed since they were last synced."""
        with self._lock:
            return self._changed(include)

    def _changed(self, include: Callable[[str], bool]) -> list[str]:
        return [rel for rel in self.local_files() if include(rel) and not self._synced(rel)]

    def delete_extras(self, scope: Sequence[str] | None = None) -> list[str]:
        """Remove the objects no local file matches (what the build removed, what a killed run
        uploaded and the resumed one did not keep); returns them. ``scope``: only among those
        folders and files (a scoped copy lacks the rest without their being garbage)."""
        with self._lock:
            local = {rel for rel in self.local_files() if in_scope(rel, scope)}
            extras = sorted(set(self.remote_objects(scope)) - local)
            for rel in extras:
                self.fs.rm_file(self.remote(rel))
            return extras

    def remove_tree(self, rel: str) -> list[str]:
        """Remove every object under the folder ``rel`` (one the mirror never syncs, so
        ``delete_extras`` leaves it); returns their relative paths."""
        root = self.remote(rel).rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return []
        for path in found:
            self.fs.rm_file(path)
        prefix = self.remote("").rstrip("/") + "/"
        return [path.removeprefix(prefix) for path in found]

    def remove(self, rel: str) -> bool:
        """Remove one object if it is there; whether it was."""
        try:
            self.fs.rm_file(self.remote(rel))
        except FileNotFoundError:
            return False
        return True

    # -- the index --------------------------------------------------------------------------

    def _loaded(self) -> dict[str, list]:
        if self._index is None:
            try:
                self._index = json.loads(self.index_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._index = {}
        return self._index

    def _save(self) -> None:
        atomic_write_text(self.index_path, json.dumps(self._loaded(), sort_keys=True), durable=False)

    def _fingerprint(self, rel: str) -> list | None:
        """[size, mtime, MD5] of a local file; None when it is gone."""
        try:
            stat = (self.local / rel).stat()
            return [stat.st_size, stat.st_mtime_ns, _md5(self.local / rel)]
        except FileNotFoundError:
            return None

    def _record(self, rel: str) -> None:
        """Note a file just downloaded as synced."""
        entry = self._fingerprint(rel)
        if entry is not None:
            self._loaded()[rel] = entry

    def _unchanged(self, rel: str, entry: list) -> bool:
        try:
            stat = (self.local / rel).stat()
        except FileNotFoundError:
            return False
        return [stat.st_size, stat.st_mtime_ns] == entry[:2]

    def _synced(self, rel: str) -> bool:
        entry = self._loaded().get(rel)
        return entry is not None and self._unchanged(rel, entry)


#: What the mirror never syncs, either way (pull, push, delete_extras), and why:
#: - the lock (``LOCK_NAME``): a local ``flock`` file in a copy, lease objects in the bucket
#:   (``lease.py``), each only meaningful where it is;
#: - the runs' LLM budget ledgers (``_cache/budget/``): a ledger belongs to one run (a fresh id
#:   per command), so no later run reads one; a process's copy of it would be its own count,
#:   and workers sharing only the bucket count in the bucket itself (``storage/ledger.py``).
_NOT_SYNCED = (LOCK_NAME, BUDGET_DIR.as_posix())


def _never_synced(rel: str) -> bool:
    return any(rel == name or rel.startswith(name + "/") for name in _NOT_SYNCED)


def in_scope(rel: str, scope: Sequence[str] | None) -> bool:
    """Whether ``rel`` is one of the files of ``scope`` or under one of its folders (``None``: all).

    >>> in_scope("_progress/shard-00001.json", ["plan.json", "_progress/"]), in_scope("kfs/a.jpg", ["_progress/"])
    (True, False)
    """
    return scope is None or any(rel.startswith(part) if part.endswith("/") else rel == part for part in scope)


def _parent(rel: str) -> str:
    """The folder of a relative path, ``""`` at the top (``"_cache/"`` for ``"_cache/x.json"``)."""
    return rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
