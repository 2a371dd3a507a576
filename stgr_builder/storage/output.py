"""A dataset on object storage: a build or re-annotation writes it, the readers read it.

A build whose ``--out`` is a URL runs on a local staging copy of the prefix
(``staging_root``: ``$STGR_CACHE_DIR/staging/<sha256 of the URL>``, else under
``$XDG_CACHE_HOME/stgr-builder`` or ``~/.cache/stgr-builder``), and keeps every promise the
folder keeps on disk:

- **one build at a time**: the prefix's lease (``lease.py``) is taken before anything else
  and held to the end; a second build refuses, naming the holder;
- **resume from the bucket alone**: the copy is made what the bucket holds first (``pull``:
  shard records and files, plan, progress and the stage store ``_cache/``), so a resume on
  another machine, or after the copy was lost, reuses what was committed;
- **no reader sees a partial shard**: when a shard ends, what changed (its Parquet files, key
  frames, stage results) is uploaded first and its completion record last, the shard's commit
  point; the manifest is uploaded last of all, the dataset's (``CommittingJob``). Uploading a
  shard file first removes the manifest, so a rebuild in progress is never read as finished;
- **nothing uncommitted stays**: objects a killed run uploaded that the resumed one did not
  keep (a shard file without a record), and its LLM budget ledger, are removed before the
  manifest is uploaded; only in the shard folders and records (``OWNED_SCOPE``): stage entries
  and key frames are content-addressed resume material, which a worker's partial copy merely
  lacks.

Readers (``open_dataset``) copy the committed dataset, the shard files its manifest lists and
what they reference, into a read copy and read that with the local code (DuckDB included).

>>> with remote_output("s3://bucket/ds") as remote:                      # doctest: +SKIP
...     job = build_job(config, remote.local, resources)
...     manifest = run(remote.job(job), flow_runner, resources)
>>> open_dataset("s3://bucket/ds")                                       # doctest: +SKIP
PosixPath('/home/me/.cache/stgr-builder/staging/5c1e.../read')
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stgr_builder.core.arrow import DATASETS
from stgr_builder.core.files import cache_home
from stgr_builder.core.hashing import sha256_file
from stgr_builder.core.layout import (
    BATCH_DIR,
    BUDGET_DIR,
    CACHE_DIR,
    FORMATS_DIR,
    MANIFEST,
    PLAN,
    PROGRESS_DIR,
    RATELIMIT_FILE,
    STAGES_DIR,
    intent_path,
    record_path,
    shard_path,
)
from stgr_builder.errors import StgrError
from stgr_builder.models import Manifest
from stgr_builder.storage.lease import Lease
from stgr_builder.storage.ledger import check_shared_ledger
from stgr_builder.storage.location import is_url, store_errors
from stgr_builder.storage.mirror import Mirror


def staging_root(url: str) -> Path:
    """The local folder of a URL's copies: ``ds/`` (a build's), ``read/`` (the readers'), and
    the files a command writes beside a dataset (a recipe's config, the demo's sources)."""
    return cache_home() / "staging" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:32]


def local_folder(out: str | Path) -> Path:
    """Where a build of ``out`` writes on this machine: the folder itself, or a URL's copy."""
    return staging_root(str(out)) / "ds" if is_url(out) else Path(out)


def beside(out: str | Path, name: str) -> Path:
    """A folder for what a command keeps with the dataset but outside the bucket (``_recipe``,
    ``_source``): inside a local ``out``, beside a URL's copy (never pulled over)."""
    return staging_root(str(out)) / name if is_url(out) else Path(out) / name


#: The folders a finished build's objects are judged in: its shard files and records, and
#: submitted batches (budget ledgers are never synced: ``mirror._never_synced``). Outside them
#: (the stage store, key frames, LLM replies, all content-addressed) an object the copy lacks is
#: resume material, never garbage.
OWNED_SCOPE = (
    *(f"{name}/" for name in sorted(DATASETS)),
    f"{PROGRESS_DIR}/",
    f"{BATCH_DIR.as_posix()}/",
)
#: What every task of an isolated worker pulls, whatever its shard: the plan, the progress
#: folder (of the shards' records and intents, a shard task keeps its own), the small state
#: shared under ``_cache/`` (the response format each endpoint accepts, the request pacing,
#: submitted batches) and, for a shard task, its own Parquet files. A
#: shard's stage entries, key frames and LLM replies come on demand (``Mirror.fetch``).
TASK_SCOPE = (
    PLAN,
    f"{PROGRESS_DIR}/",
    f"{FORMATS_DIR.as_posix()}/",
    RATELIMIT_FILE.as_posix(),
    f"{BATCH_DIR.as_posix()}/",
)
#: What ``finalize`` pulls: every record and shard file, nothing under ``_cache/`` nor ``kfs/``.
FINALIZE_SCOPE = (PLAN, MANIFEST, *OWNED_SCOPE)
#: What the command's own copy takes back once isolated workers built the dataset: what a
#: reader looks at (the audit it prints: shards, records, key frames, the card ``README.md``),
#: not the stage store nor the LLM replies (the bulk of the prefix, read by shard tasks only).
READ_SCOPE = (*FINALIZE_SCOPE, "kfs/", "README.md")


def _is_record(rel: str) -> bool:
    return rel.startswith("_progress/shard-") and rel.endswith(".json")


def _in_dataset(rel: str) -> bool:
    return rel.split("/", 1)[0] in DATASETS


def _of_a_shard(rel: str) -> bool:
    """Whether ``rel`` belongs to one shard: its Parquet files, its record, its intent."""
    return _in_dataset(rel) or _is_record(rel) or (rel.startswith(f"{PROGRESS_DIR}/writing-") and rel.endswith(".json"))


def _own_files(shard: int) -> set[str]:
    """The files of one shard (``_of_a_shard``), relative.

    >>> sorted(_own_files(3))[:2]
    ['_progress/shard-00003.json', '_progress/writing-00003.json']
    """
    files = {shard_path(Path(), name, shard) for name in DATASETS}
    return {path.as_posix() for path in (*files, record_path(Path(), shard), intent_path(Path(), shard))}


@dataclass
class CommittingJob:
    """A job of the shard executor (``executor.Job``) whose output is a URL's staging copy:
    it runs ``inner`` unchanged and commits each finished shard, then the dataset, to the
    bucket. Plain data: it pickles to Dask workers with the mirror.

    ``isolated``: the processes running the tasks share nothing but the bucket (Dask workers,
    on one machine or many): each process works on its own temporary copy (``inner.moved``
    re-points the job at it), which holds only what its tasks need: before each task the
    small shared files are pulled (``TASK_SCOPE``; ``finalize``: ``FINALIZE_SCOPE``), so a task
    sees what every other committed, and a shard's stage entries, key frames and LLM replies
    are read through on a local miss (``Mirror.fetch``, the job's ``ctx.fetch``). Otherwise
    every task writes the one staging copy (threads)."""

    inner: Any
    mirror: Mirror
    owner: str
    isolated: bool = False
    flow_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.flow_name = str(self.inner.flow_name)

    @property
    def ctx(self) -> Any:
        return self.inner.ctx

    @property
    def resolved(self) -> Any:
        return self.inner.resolved

    @contextmanager
    def claim(self) -> Iterator[Any]:
        """The inner job's claim of the staging copy (its checks of what the prefix holds name
        the URL), its owner record then uploaded."""
        with ExitStack() as stack:
            try:
                held = stack.enter_context(self.inner.claim())
            except StgrError as exc:
                raise StgrError(str(exc).replace(str(self.mirror.local), self.mirror.url)) from None
            self._push_content(self.mirror)
            yield held

    def _here(self, scope: tuple[str, ...], keep: Callable[[str], bool] = lambda rel: True) -> tuple[Any, Mirror]:
        """The job and the copy this process works on (``isolated``: its own, with ``scope``
        just pulled (the objects ``keep`` selects) and the rest read through on demand)."""
        if not self.isolated:
            return self.inner, self.mirror
        copy = process_copy(self.mirror.url, self.owner)
        copy.pull(keep, scope=scope)
        # The run's budget stays in the bucket: a ledger in each copy would be each process's own.
        return self.inner.moved(copy.local, shared=self.mirror.url, fetch=copy.fetch), copy

    def plan(self) -> Any:
        inner, mirror = self._here(TASK_SCOPE)
        plan = inner.plan()
        if self.isolated:  # the plan's records, for the tasks of the other processes
            self._check_lease()
            self._push_content(mirror)
        return plan

    def run_shard(self, shard: Any, resources: Any) -> Any:
        own = _own_files(shard.shard)  # of the shard files and records listed, its own only
        scope = (*TASK_SCOPE, *(f"{name}/" for name in sorted(DATASETS)))
        inner, mirror = self._here(scope, lambda rel: not _of_a_shard(rel) or rel in own)
        result = inner.run_shard(shard, resources)
        self.commit_shard(mirror, result.shard, complete=result.complete)
        return result

    def finalize(self, plan: Any, results: Any, resources: Any) -> Manifest:
        inner, mirror = self._here(FINALIZE_SCOPE)
        manifest = inner.finalize(plan, results, resources)
        self.commit_dataset(mirror)
        return manifest

    def _check_lease(self) -> None:
        Lease(self.mirror.url, owner=self.owner).check()

    @staticmethod
    def _push_content(mirror: Mirror) -> None:
        """Upload what changed but the records and the manifest; a changed shard file first
        takes the manifest down (it would name the old file's checksum)."""
        content = mirror.changed(lambda rel: not _is_record(rel) and rel != MANIFEST)  # one walk of the copy
        if any(_in_dataset(rel) for rel in content):
            mirror.remove(MANIFEST)
        mirror.push_files(content)

    def commit_shard(self, mirror: Mirror, shard: int, complete: bool) -> None:
        """A shard ended: its files (and the stage results, so a resume reuses them), then its
        record, the shard's commit point (only a complete shard has one)."""
        self._check_lease()
        self._push_content(mirror)
        if complete:
            mirror.push_files([record_path(Path(), shard).as_posix()])

    def commit_dataset(self, mirror: Mirror) -> None:
        """Every shard ended and the manifest is written: the rest (records, plan, card), then
        the objects the run did not keep are removed, then the manifest, the commit point."""
        self._check_lease()
        self._push_content(mirror)
        mirror.push(lambda rel: rel != MANIFEST)
        mirror.delete_extras(OWNED_SCOPE)  # a worker's copy lacks most stage entries and frames
        # Budget ledgers of runs killed before their end (this run's is gone already): no later
        # run reads them, and one build at a time holds the prefix.
        mirror.remove_tree(BUDGET_DIR.as_posix())
        mirror.push_files([MANIFEST])


#: Each process's own copy of a URL's dataset when the build's processes share no disk
#: (``CommittingJob.isolated``), by (URL, build owner): made by its first task, reused by the
#: process's later ones, removed when the process exits. Per process by nature: a Dask worker
#: unpickles a fresh job for every task, so the job cannot hold it.
_PROCESS_COPIES: dict[tuple[str, str], Mirror] = {}
_COPIES_LOCK = threading.Lock()


def process_copy(url: str, owner: str) -> Mirror:
    """This process's temporary copy of ``url`` for the build ``owner`` holds."""
    with _COPIES_LOCK:
        mirror = _PROCESS_COPIES.get((url, owner))
        if mirror is None:
            folder = Path(tempfile.mkdtemp(prefix="stgr-copy-"))
            atexit.register(shutil.rmtree, folder, True)
            mirror = _PROCESS_COPIES[(url, owner)] = Mirror(url, folder / "ds")
        return mirror


@dataclass(frozen=True)
class RemoteOutput:
    """A URL held by this build: its staging copy ``local``, in step with the bucket."""

    url: str
    mirror: Mirror
    owner: str

    @property
    def local(self) -> Path:
        return self.mirror.local

    def job(self, inner: Any, isolated: bool = False) -> CommittingJob:
        """``inner`` (built on ``local``) committing to the bucket as it runs; ``isolated``:
        its tasks run in processes that share nothing but the bucket (``CommittingJob``), whose
        LLM budget is then counted in the bucket: refused here, before any work, on a store
        where that is not supported yet."""
        annotator = inner.ctx.config.annotator
        if isolated and annotator.backend == "openai" and (annotator.budget, annotator.budget_tokens) != (None, None):
            check_shared_ledger(self.url)
        return CommittingJob(inner=inner, mirror=self.mirror, owner=self.owner, isolated=isolated)


@contextmanager
def remote_output(url: str) -> Iterator[RemoteOutput]:
    """Hold ``url`` (its lease, renewed while the block runs) with a staging copy made what
    the bucket holds; the lease is released on the way out, however the block ends."""
    with store_errors(url):
        lease = Lease(url).acquire()
    try:
        mirror = Mirror(url, staging_root(url) / "ds")
        mirror.pull()
        yield RemoteOutput(url=url.rstrip("/"), mirror=mirror, owner=lease.owner)
    finally:
        lease.release()


def open_dataset(location: str | Path, with_stages: bool = False) -> Path:
    """A dataset to read: a local folder as it is, or a URL's committed dataset copied into
    its read copy (what its manifest lists, its key frames and records; ``with_stages``: the
    stage store too, for a re-annotation that reuses its parent's frames and detections).

    The copy is checked against the manifest read first: the same manifest after the copy, and
    each shard file downloaded with the manifest's sha256; a build rewriting the dataset
    meanwhile is waited out (three tries), then ``StgrError``. So is a URL holding no manifest
    (not a finished build)."""
    if not is_url(location):
        return Path(location)
    url = str(location).rstrip("/")
    mirror = Mirror(url, staging_root(url) / "read", staging_root(url) / "read-objects.json")
    for attempt in range(3):
        with store_errors(url):
            if _read_copy(mirror, with_stages):
                return mirror.local
        time.sleep(0.5 * (attempt + 1))
    raise StgrError(f"{url} kept changing while it was read (a build is writing it): run the command once it is done")


def _read_copy(mirror: Mirror, with_stages: bool) -> bool:
    """Pull the committed dataset into ``mirror``; whether the copy matches its manifest."""
    try:
        text = mirror.fs.cat_file(mirror.remote(MANIFEST))
    except FileNotFoundError:
        raise StgrError(
            f"no {MANIFEST} in {mirror.url}: not a finished build (run `stgr build` to finish it)"
        ) from None
    listed = {shard.path: shard.sha256 for shard in Manifest.model_validate_json(text).shards}

    def committed(rel: str) -> bool:
        if rel.startswith(f"{CACHE_DIR.as_posix()}/"):
            return with_stages and rel.startswith(f"{STAGES_DIR.as_posix()}/")
        return rel in listed or not (_in_dataset(rel) and rel.endswith(".parquet"))

    fetched = set(mirror.pull(committed))
    wrong = [rel for rel, sha in listed.items() if rel in fetched and sha256_file(mirror.local / rel) != sha]
    for rel in wrong:  # a newer file than the manifest: fetched again on the next try
        (mirror.local / rel).unlink()
    copied = mirror.local / MANIFEST
    return not wrong and copied.is_file() and copied.read_bytes() == text
