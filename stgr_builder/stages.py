"""Per-sample stage results on disk: the store that makes a build resume sample by sample.

Each stage's result for a sample is one small JSON file, addressed by a key that hashes what
decides the result: the sample (its record, less where it was read from, and its media file's
content fingerprint: ``core.hashing.media_fingerprint``, so a replaced file gets new keys and an
unchanged one copied elsewhere keeps them), the stage's
configuration, the key of the stage before it, and the digest of the code that makes the
result (``core.codehash``: the stage package's modules and all they import, less comments and
docstrings), so a changed stage runs again, with the stages after it, and an unchanged one
earlier in the chain is reused. A resumed shard task
loads what is stored and runs only the samples that are missing; re-annotation finds the
frames and detections of its samples here and runs annotate alone.

    <out>/_cache/stages/probe/3f/3f9a...e1.json      {"stage": "probe", "work": {"video": {...}}}
    <out>/_cache/stages/detect/a0/a07c...42.json     {"stage": "detect", "work": {"detections": [...]}}
    <out>/_cache/stages/annotate/..                  {"stage": "annotate", "reject": {...}}

The store is wrapped around plain steps (``StoredStep``): the stages themselves know nothing of
it. Verify and write are pure and cheap; they run again.

>>> store = StageStore(Path("out"))                                             # doctest: +SKIP
>>> steps = stored_steps(steps, store, fingerprints)                            # doctest: +SKIP

A worker whose copy of the dataset holds only what its shard needs (a build into a bucket on
isolated workers, ``storage/output.py``) gives the store a ``fetch`` hook (a plain callable,
relative paths in: ``Mirror.fetch``): the entries of a batch of samples it lacks, and the key
frames a reused sample entry names, are then brought from the bucket in one round each.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from stgr_builder.core.codehash import code_digest
from stgr_builder.core.files import atomic_write_bytes
from stgr_builder.core.hashing import digest
from stgr_builder.core.layout import STAGES_DIR
from stgr_builder.core.resources import Resources
from stgr_builder.core.steps import Deferred, Item, Step, Stream
from stgr_builder.errors import warn
from stgr_builder.models import LlmUsage, Reject, RejectCode, SampleWork, SourceSample, Stage
from stgr_builder.storage.media import media_location

#: What each stored stage adds to a ``SampleWork``: these fields, and nothing else, are saved.
STAGE_FIELDS: dict[Stage, tuple[str, ...]] = {
    Stage.PROBE: ("video", "image"),
    Stage.SAMPLE: ("frames", "track_frames", "span_frames"),
    # The detect step keeps only the neighbour frames it detected (the track gate's, staged).
    Stage.DETECT: ("detections", "track_frames", "track_detections", "span_detections"),
    # The event judge (``annotate/events.py``) may refine the span first: the sample, its
    # lineage and the frames that follow the span are the stage's too.
    Stage.ANNOTATE: ("annotation", "votes", "box_votes", "sample", "lineage", "frames", "detections"),
}


class StageEntry(BaseModel):
    """One stored result: the stage's fields of the work, or the reject it ended in."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage
    work: dict[str, Any] | None = None
    reject: Reject | None = None
    llm: LlmUsage | None = None


#: Brings named files (relative to the dataset folder) that the local copy lacks from where
#: the dataset really is, a missing one being no error (``storage.mirror.Mirror.fetch``).
Fetch = Callable[[list[str]], object]


class StageStore:
    """Stage results by key under ``root/_cache/stages``; reads fall back to ``parents``
    (an earlier version's dataset folder), writes go to ``root`` only. ``fetch``: the
    read-through of a partial copy of ``root`` (None: ``root`` holds all there is).

    Safe from threads and processes: each file is written under a unique temp name, then
    renamed; two writers of one key leave one whole file.
    """

    def __init__(self, root: Path, parents: Iterable[Path] = (), fetch: Fetch | None = None):
        self.root = Path(root)
        self.folder = self.root / STAGES_DIR
        self.parents = [Path(p) / STAGES_DIR for p in parents]
        self.fetch = fetch

    def bring(self, rels: Iterable[str]) -> None:
        """Fetch the files (relative to ``root``) the copy lacks, in one round (no hook: nothing)."""
        if self.fetch is None:
            return
        missing = sorted({rel for rel in rels if not (self.root / rel).is_file()})
        if missing:
            self.fetch(missing)

    def prefetch(self, stage: Stage, keys: Iterable[str]) -> None:
        """Bring the entries of ``keys`` the copy lacks (one round for a batch of samples)."""
        if self.fetch is not None:
            self.bring(self.path(stage, key).relative_to(self.root).as_posix() for key in keys)

    def path(self, stage: Stage, key: str, folder: Path | None = None) -> Path:
        return (folder or self.folder) / stage.value / key[:2] / f"{key}.json"

    def get(self, stage: Stage, key: str) -> StageEntry | None:
        for folder in [self.folder, *self.parents]:
            path = self.path(stage, key, folder)
            try:
                return StageEntry.model_validate_json(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValidationError, ValueError) as exc:
                warn(f"{path}: {_unusable(exc)}; ignored, the {stage.value} step runs again")
        return None

    def put(self, key: str, entry: StageEntry) -> None:
        # No fsync (one per sample and stage was ~0.5 ms, 4 x the samples): the rename keeps
        # the entry whole against a kill; after a power loss a torn entry fails validation in
        # ``get`` and the stage runs again. Finished shards are written durably (shards/writer.py).
        atomic_write_bytes(
            self.path(entry.stage, key), entry.model_dump_json(exclude_none=True).encode("utf-8"), durable=False
        )

    def count(self, stage: Stage) -> int:
        """Entries stored for a stage in this folder (tests and audits)."""
        folder = self.folder / stage.value
        return len(list(folder.glob("*/*.json"))) if folder.is_dir() else 0


#: Fields of a sample that say where it was read from, not what it is: left out of every key,
#: so the same media and annotations in another folder or machine resume from the same store.
LOCATION_FIELDS = {"media_root", "origin"}


def sample_inputs(sample: SourceSample, resources: Resources | None = None) -> list:
    """What of a sample decides its results: the record without its location, and the content
    fingerprint of its media file (None when it cannot be read: the probe rejects it)."""
    rel = sample.video_path or sample.image_path or ""  # (a SourceSample has one of the two)
    try:
        location = media_location(sample.media_root, rel)  # a path, or a URL: the same fingerprint
        fingerprint = (resources or Resources()).media_fingerprint(location)
    except (OSError, TypeError):
        fingerprint = None
    return [sample.model_dump(mode="json", exclude=LOCATION_FIELDS), fingerprint]


class StoredStep(Step):
    """A step with its per-sample results in a ``StageStore``.

    Works like the step (an iterable of items in, items out, lazily): samples whose result is
    stored get it applied and pass on without running the step; the others go through the
    step in its own batches, and each result is stored as it comes out. The step's stats
    count both, and ``stats.resumed`` says how many came from the store.

    ``fingerprint`` is everything of the configuration that decides this stage's result;
    ``code`` the digest of the code that makes it (default: the step's stage package's).
    """

    def __init__(
        self,
        step: Step,
        store: StageStore,
        fingerprint: Any,
        *,
        code: str | None = None,
        root: Path | None = None,
        resources: Resources | None = None,
    ):
        self.stage = step.stage
        super().__init__()
        self.stats = step.stats  # one set of counters: the wrapped step's
        self.step = step
        self.store = store
        code = code if code is not None else code_digest(step_package(step))
        self.fingerprint = digest([self.stage.value, fingerprint, code])
        self.root = root
        self.resources = resources
        self._loaded_llm: LlmUsage | None = None
        # key of each sample's result at this stage, read by the next stage for its own key
        self.keys: dict[str, str] = {}
        self.upstream: StoredStep | None = None

    @property
    def llm_usage(self) -> LlmUsage | None:
        """The step's LLM usage of this run, plus that of the results loaded from the store
        (counted as cached: an earlier run paid for them)."""
        fresh = self.step.llm_usage
        if self._loaded_llm is None:
            return fresh
        loaded = self._loaded_llm.model_copy(update={"cached": self._loaded_llm.requests})
        return loaded.merge(fresh)

    def key(self, work: SampleWork) -> str:
        sample_id = work.sample.id
        if self.upstream is not None:
            base: Any = self.upstream.keys.get(sample_id) or digest(["unkeyed", work.sample.model_dump(mode="json")])
        else:
            base = sample_inputs(work.sample, self.resources)
        key = digest([self.fingerprint, base])
        self.keys[sample_id] = key
        return key

    def _bring_frames(self, entries: Iterable[StageEntry | None]) -> None:
        """The key frames reused sample entries name, brought into a partial copy in one round
        (the steps after this one read them)."""
        if self.stage is not Stage.SAMPLE or self.store.fetch is None:
            return
        works = [entry.work for entry in entries if entry is not None and entry.work is not None]
        names = ("frames", "track_frames", "span_frames")
        paths = [frame["path"] for work in works for name in names for frame in work.get(name) or []]
        self.store.bring(path for path in paths if isinstance(path, str))

    def _apply(self, work: SampleWork, entry: StageEntry) -> Item | None:
        if entry.reject is not None:
            return entry.reject
        if entry.work is None:
            return None
        try:
            updated = SampleWork.model_validate({**work.model_dump(), **entry.work})
        except ValidationError:
            return None
        # The frames must still be on disk (a pruned kfs/ means: decode again).
        frames = [*updated.frames, *updated.track_frames]
        if (
            self.stage is Stage.SAMPLE
            and self.root is not None
            and not all((self.root / frame.path).is_file() for frame in frames)
        ):
            return None
        return updated

    def _count(self, item: Item) -> None:
        stats = self.step.stats
        stats.seen += 1
        stats.resumed += 1
        if isinstance(item, Reject):
            stats.rejected[item.code.value] = stats.rejected.get(item.code.value, 0) + 1
        else:
            stats.kept += 1

    def _entry(self, item: Item, llm: LlmUsage | None) -> StageEntry | None:
        if isinstance(item, Reject):
            # A pending sample (transient failure) is never stored: the next run tries it again.
            if item.stage is not self.stage or item.code is RejectCode.PENDING:
                return None
            return StageEntry(stage=self.stage, reject=item, llm=llm)
        fields = STAGE_FIELDS[self.stage]
        dumped = item.model_dump(mode="json", include=set(fields))
        return StageEntry(stage=self.stage, work=dumped, llm=llm)

    def __call__(self, items: Iterable[Stream]) -> Iterator[Stream]:
        ready: deque[Item] = deque()
        pending: dict[str, str] = {}  # sample id -> key, of the samples sent to the step

        def misses() -> Iterator[Stream]:
            for chunk in self._chunks(items):
                keys = {id(item): self.key(item) for item in chunk if isinstance(item, SampleWork)}
                self.store.prefetch(self.stage, keys.values())
                entries = {ident: self.store.get(self.stage, key) for ident, key in keys.items()}
                self._bring_frames(entries.values())
                for item in chunk:
                    if isinstance(item, Deferred):
                        yield item  # through the step, which passes it on and stops
                        return
                    if isinstance(item, Reject):
                        ready.append(item)
                        continue
                    key, entry = keys[id(item)], entries[id(item)]
                    applied = self._apply(item, entry) if entry is not None else None
                    if entry is None or applied is None:
                        pending[item.sample.id] = key
                        yield item
                        continue
                    self._count(applied)
                    if entry.llm is not None:
                        self._loaded_llm = entry.llm.merge(self._loaded_llm)
                    ready.append(applied)

        for out in self.step(misses()):
            if isinstance(out, Deferred):
                yield out  # the shard stops here: nothing more is stored
                return
            while ready:
                yield ready.popleft()
            sample_id = out.id if isinstance(out, Reject) else out.sample.id
            key = pending.pop(sample_id, None)
            if key is not None:
                # Each result is stored with its own sample's LLM usage: a kill between two
                # results of one batch then neither loses nor double-counts a reply.
                entry = self._entry(out, self.step.usage_of(sample_id))
                if entry is not None:
                    self.store.put(key, entry)
            yield out
        while ready:
            yield ready.popleft()

    def _chunks(self, items: Iterable[Stream]) -> Iterator[list[Stream]]:
        """The items in the chunks whose entries are looked up together: one item at a time on
        a whole local copy (as lazy as the steps), ``PREFETCH`` at a time with a ``fetch`` hook
        (one round of downloads per chunk); a ``Deferred`` ends a chunk."""
        size = PREFETCH if self.store.fetch is not None else 1
        chunk: list[Stream] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= size or isinstance(item, Deferred):
                yield chunk
                chunk = []
        if chunk:
            yield chunk


#: Samples whose stored entries a worker with a partial copy fetches in one round.
PREFETCH = 32


def stored_steps(
    steps: list[Step],
    store: StageStore,
    fingerprints: dict[Stage, Any],
    root: Path | None = None,
    resources: Resources | None = None,
) -> list[Step]:
    """Wrap the steps whose stage has a fingerprint; chain their keys in order. A stored step's
    key holds the code of the steps that ran since the stored step before it, its own included
    (the track gate's code decides what the annotator is given).

    >>> wrapped = stored_steps(steps, StageStore(out), {Stage.PROBE: {...}})  # doctest: +SKIP
    """
    wrapped: list[Step] = []
    previous: StoredStep | None = None
    packages: set[str] = set()  # of the steps since the last stored one
    for step in steps:
        packages.add(step_package(step))
        if step.stage in fingerprints and step.stage in STAGE_FIELDS:
            code = code_digest(*sorted(packages))
            packages = set()
            stored = StoredStep(step, store, fingerprints[step.stage], code=code, root=root, resources=resources)
            stored.upstream = previous
            previous = stored
            wrapped.append(stored)
        else:
            wrapped.append(step)
    return wrapped


def step_package(step: Step) -> str:
    """The package a step's code lives in: ``stgr_builder.detect`` for ``DetectStep``.

    >>> from stgr_builder.verify.steps import VerifyStep
    >>> step_package(VerifyStep.__new__(VerifyStep))
    'stgr_builder.verify'
    """
    return ".".join(type(step).__module__.split(".")[:2])


def _unusable(exc: Exception) -> str:
    """Why a stored file cannot be used, in a few words."""
    if isinstance(exc, OSError):
        return f"unreadable ({exc.strerror or type(exc).__name__})"
    return "not a stored entry (damaged, or of another version)"
