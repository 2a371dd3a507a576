"""Ingest: read every configured source through its adapter into ``SourceSample`` records.

An adapter is a function registered under the adapter name of ``SourceConfig.adapter``; it
reads one annotation file and yields ``SourceSample | Reject``. Adding a format is one small
file, ``stgr_builder/sources/<name>.py``::

    from stgr_builder.sources import AdapterContext, iter_json_lines, register

    @register("charades_sta")
    def read_charades(ctx: AdapterContext):
        for line, data in iter_json_lines(ctx.path):
            yield ctx.sample(ctx.origin(line), source_id=..., task=..., question=..., answer=..., video_path=...)

``ingest`` then applies what every source shares: ``limit``, media paths that must stay
inside the media root, and exact duplicates.

>>> samples, rejects, stats = ingest(config, Path("demo"))  # doctest: +SKIP
>>> stats.seen, stats.kept, stats.rejected  # doctest: +SKIP
(70, 69, {'duplicate': 1})
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stgr_builder.errors import StgrError
from stgr_builder.models import BuildConfig, Reject, RejectCode, SourceConfig, SourceSample, Stage, StepStats, sample_id
from stgr_builder.storage.location import Location, filesystem, is_url
from stgr_builder.storage.media import MediaFiles, media_location

__all__ = [
    "Adapter",
    "AdapterContext",
    "check_sources",
    "get_adapter",
    "ingest",
    "iter_json_lines",
    "register",
    "describe_error",
]

Adapter = Callable[["AdapterContext"], Iterator[SourceSample | Reject]]

_ADAPTERS: dict[str, Adapter] = {}

#: The UTF-8 byte-order mark some editors write at the start of a file; accepted and skipped.
BOM = b"\xef\xbb\xbf"


def register(name: str) -> Callable[[Adapter], Adapter]:
    """Decorator: make ``fn`` the adapter called ``name`` (a value of ``SourceConfig.adapter``)."""

    def decorate(fn: Adapter) -> Adapter:
        _ADAPTERS[name] = fn
        return fn

    return decorate


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name``, importing ``stgr_builder.sources.<name>`` on first use.

    >>> get_adapter("demo").__name__
    'read_demo'
    """
    if name not in _ADAPTERS:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        if name not in _ADAPTERS:
            available = ", ".join(sorted(_ADAPTERS) + ([] if "demo" in _ADAPTERS else ["demo"]))
            raise StgrError(f"source adapter {name!r} is not available in this version (available: {available})")
    return _ADAPTERS[name]


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter knows about its source, and how it makes samples and rejects."""

    source: SourceConfig
    path: Path  # the annotation file, resolved (a local copy of one in a bucket)
    media_root: str  # an absolute path, or a URL (s3://bucket/media)
    seed: int = 0  # the build's seed, for anything an adapter draws at random (MCQ distractor order)
    media: MediaFiles = field(default_factory=MediaFiles)  # how media under a URL are read
    path_url: str | None = None  # the annotation file's URL when it is in a bucket (``path``: its copy)

    @contextlib.contextmanager
    def local_media(self, rel: str) -> Iterator[Path]:
        """A local path of the media file ``rel`` (a copy from the bucket under a URL root)
        while the block runs; an adapter that reads a file's header (its size) uses it."""
        with self.media.local(media_location(self.media_root, rel)) as path:
            yield path

    def origin(self, line: int | str) -> str:
        """``file:line`` as the config names the file, so it reads the same on every machine."""
        return f"{self.source.path}:{line}"

    def sample(self, origin: str, *, source_id: str, question: str, **fields: Any) -> SourceSample | Reject:
        """A ``SourceSample`` with its id, source, media root and datasets filled in, or a
        MALFORMED_ROW reject when the fields do not make a valid sample."""
        try:
            return SourceSample(
                id=sample_id(self.source.name, source_id, question),
                source=self.source.name,
                source_id=source_id,
                question=question,
                media_root=self.media_root,
                datasets=list(self.source.datasets),
                origin=origin,
                **fields,
            )
        except ValidationError as err:
            return self.malformed(origin, describe_error(err))

    def malformed(self, origin: str, message: str) -> Reject:
        """A MALFORMED_ROW reject whose id is stable for this file and line."""
        return Reject(
            id=sample_id(self.source.name, origin, ""),
            stage=Stage.INGEST,
            code=RejectCode.MALFORMED_ROW,
            message=message,
            source=self.source.name,
            origin=origin,
        )


def describe_error(err: ValidationError, limit: int = 400) -> str:
    """A pydantic error as one line naming each bad field.

    >>> describe_error(err)  # doctest: +SKIP
    "field 'task': Input should be 'temporal QA', ...; field 'answer': Field required"
    """
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"field {loc!r}: {msg}" if loc else msg)
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` per non-blank line; a line that is not JSON (or not
    UTF-8) gives ``(line number, ValueError)`` instead, so one bad line rejects one item."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(BOM)  # editors on Windows start UTF-8 files with one
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8"))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                yield number, ValueError(f"not valid JSON: {exc}")


# ---------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------


def _context(source: SourceConfig, config_dir: Path, seed: int = 0, media: MediaFiles | None = None) -> AdapterContext:
    """The source's context; a path or URL that is not there is a config error (``StgrError``).
    An annotation file in a bucket is named by its URL here (``path``); ``ingest`` reads a
    local copy of it."""
    where = Location.parse(source.path, base=config_dir)
    if where.local is None:
        if not _remote_is(where.url, "file"):
            raise StgrError(f"source {source.name!r}: annotation file not found: {where.url}")
        path = Path(where.url.rsplit("/", 1)[-1])  # until ingest reads it: a local copy of path_url
    else:
        path = where.local
        if not path.is_file():
            raise StgrError(
                f"source {source.name!r}: annotation file not found: {path} "
                "(paths in the config are relative to the config file's folder)"
            )
        path = path.resolve()
    root = Location.parse(source.media_root, base=config_dir)
    if root.local is None:
        if not _remote_is(root.url, "directory"):
            raise StgrError(f"source {source.name!r}: media_root is not a folder: {root.url}")
        media_root = root.url
    else:
        if not root.local.is_dir():
            raise StgrError(
                f"source {source.name!r}: media_root is not a folder: {root.local} "
                "(paths in the config are relative to the config file's folder)"
            )
        media_root = str(root.local.resolve())
    return AdapterContext(
        source=source,
        path=path,
        media_root=media_root,
        seed=seed,
        media=media or MediaFiles(),
        path_url=where.url if where.is_remote else None,
    )


def _remote_is(url: str, kind: str) -> bool:
    """Whether ``url`` is a ``file`` or a ``directory`` (a prefix holding objects) on its store."""
    fs, path = filesystem(url)
    try:
        return fs.isfile(path) if kind == "file" else fs.isdir(path)
    except (FileNotFoundError, PermissionError):
        return False
    except OSError as exc:  # the store does not answer: say so in one line
        raise StgrError(f"{url}: cannot reach the store ({exc})") from exc


def check_sources(config: BuildConfig, config_dir: Path) -> None:
    """``StgrError`` (one line naming the source and the path) unless every source's annotation
    file and media root exist and its adapter is known: checked before any work starts."""
    for source in config.sources:
        _context(source, Path(config_dir), config.seed)
        get_adapter(source.adapter)


_DRIVE = re.compile(r"^[A-Za-z]:")


class PathResolver:
    """``Path.resolve()`` (``os.path.realpath``) of many files in few folders: each folder is
    resolved once, each file costs one ``lstat`` (a symlinked file is resolved whole). Ingest
    resolves every record's media path; per path, ``resolve`` walks every component (100,000
    records: 21 s of a 63 s plan). Paths must hold no ``..`` (``unsafe_media_path`` refuses
    those first). One per ingest: a folder renamed later is resolved again by the next.
    ``text`` is the same as a string: no ``Path`` is made (parsing one costs more than the
    lookup, 100,000 times).

    >>> PathResolver()(Path("/data/videos/a.mp4"))  # doctest: +SKIP
    PosixPath('/mnt/disk1/videos/a.mp4')
    """

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}
        self._roots: dict[str, str] = {}
        # The last path asked and its answer: ingest's duplicate key and its path check
        # resolve the same path one after the other (one lstat, not two).
        self._last: tuple[str, str] = ("", "")

    def __call__(self, path: Path) -> Path:
        return Path(self.text(path))

    def text(self, path: str | os.PathLike[str]) -> str:
        """The resolved ``path``, normalized, as a string."""
        text = os.path.normpath(os.path.abspath(path))
        if text == self._last[0]:
            return self._last[1]
        if os.path.islink(text):
            resolved = os.path.realpath(text)
        else:
            folder, name = os.path.split(text)
            real = self._folders.get(folder)
            if real is None:
                real = self._folders[folder] = os.path.realpath(folder)
            resolved = os.path.join(real, name)
        self._last = (text, resolved)
        return resolved

    def root(self, media_root: Path | str) -> str:
        """``text(media_root)``, once per ingest (every record of a source shares its root)."""
        key = str(media_root)
        real = self._roots.get(key)
        if real is None:
            real = self._roots[key] = self.text(media_root)
        return real


def _inside(path: str, folder: str) -> bool:
    """Whether the normalized absolute ``path`` is ``folder`` or under it (``is_relative_to``)."""
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


def unsafe_media_path(rel: str, media_root: Path | str, resolve: PathResolver | None = None) -> str | None:
    """Why ``rel`` must not be opened under ``media_root``, or None when it is safe.

    >>> unsafe_media_path("../etc/passwd", Path("/data"))
    "'..' in media path '../etc/passwd'"
    """
    if not rel:
        return "empty media path"
    posix = rel.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(rel):
        return f"absolute media path {rel!r} (must be relative to the media root)"
    if ".." in posix.split("/"):
        return f"'..' in media path {rel!r}"
    if is_url(media_root):
        return None  # keys in a bucket have no symlinks: the lexical checks are the whole check
    resolve = resolve or PathResolver()
    try:  # a symlink inside the root may still point out of it
        inside = _inside(resolve.text(os.path.join(media_root, posix)), resolve.root(media_root))
    except (OSError, ValueError) as exc:
        return f"media path {rel!r} cannot be resolved: {exc}"
    return None if inside else f"media path {rel!r} resolves outside the media root"


def _read_source(ctx: AdapterContext) -> Iterator[SourceSample | Reject]:
    with ctx.media.local(ctx.path_url or ctx.path) as local:  # an annotation file in a bucket: a local copy
        items = get_adapter(ctx.source.adapter)(replace(ctx, path=local))
        try:
            yield from itertools.islice(items, ctx.source.limit)  # limit: the first N items of the file
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # release the file when the limit stops us early


def ingest(config: BuildConfig, config_dir: Path) -> tuple[list[SourceSample], list[Reject], StepStats]:
    """Read all sources; return the samples (sorted by id), the rejects, and the step's counts.

    Rejects: MALFORMED_ROW (from the adapters), UNSAFE_PATH (absolute or ``..`` media
    paths, or ones resolving outside the media root), DUPLICATE (a repeat of an earlier item:
    the same record again, or the same media file and question), DUPLICATE_ID (the source's
    own id, for the same task, already taken by an item with different content; the message
    names both origins). The first in config and file order stays. A missing annotation file
    or media root is a config error: ``StgrError``.

    >>> samples, rejects, stats = ingest(BuildConfig.model_validate(yaml.safe_load(text)), Path("."))  # doctest: +SKIP
    """
    started = time.perf_counter()
    media = MediaFiles.of(config.cache)
    contexts = [_context(source, Path(config_dir), config.seed, media) for source in config.sources]  # fail first
    kept: dict[str, SourceSample] = {}
    by_media: dict[tuple[str, str], SourceSample] = {}
    by_source_id: dict[tuple[str, str, str], SourceSample] = {}
    rejects: list[Reject] = []
    seen = 0
    resolve = PathResolver()
    for ctx in contexts:
        for item in _read_source(ctx):
            seen += 1
            if isinstance(item, Reject):
                rejects.append(item)
                continue
            media_key = _media_key(ctx, item, resolve)
            reject = _check(ctx, item, kept, by_media, by_source_id, media_key, resolve)
            if reject is not None:
                rejects.append(reject)
                continue
            kept[item.id] = item
            if media_key is not None:  # None: an unsafe path, which _check rejected
                by_media[media_key] = item
            by_source_id[_source_id_key(item)] = item
    samples = sorted(kept.values(), key=lambda s: s.id)
    rejects.sort(key=lambda r: (r.source, r.origin, r.id))
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.code.value] = counts.get(reject.code.value, 0) + 1
    stats = StepStats(
        step=Stage.INGEST.value, seen=seen, kept=len(samples), rejected=counts, seconds=time.perf_counter() - started
    )
    return samples, rejects, stats


def _media_key(ctx: AdapterContext, sample: SourceSample, resolve: PathResolver) -> tuple[str, str] | None:
    """(the media file, resolved; the question): two samples with the same are duplicates.
    None for a path ``unsafe_media_path`` refuses (it is never resolved)."""
    rel = sample.video_path if sample.video_path is not None else sample.image_path
    if not rel or ".." in rel.replace("\\", "/").split("/") or rel.startswith("/"):
        return None
    if is_url(ctx.media_root):
        return media_location(ctx.media_root, rel), sample.question
    return resolve.text(os.path.join(ctx.media_root, rel)), sample.question


def _source_id_key(sample: SourceSample) -> tuple[str, str, str]:
    # One source record may give one sample per task (temporal, MCQ, spatio-temporal) under
    # the same source id; two records may not share it.
    return sample.source, sample.source_id, sample.task.value


def _differences(first: SourceSample, other: SourceSample) -> list[str]:
    """The fields in which two samples differ (their origins, and the ids derived from the rest, aside)."""
    a, b = first.model_dump(exclude={"origin", "id"}), other.model_dump(exclude={"origin", "id"})
    return [name for name in a if a[name] != b[name]]


def _check(
    ctx: AdapterContext,
    sample: SourceSample,
    kept: dict[str, SourceSample],
    by_media: dict[tuple[str, str], SourceSample],
    by_source_id: dict[tuple[str, str, str], SourceSample],
    media_key: tuple[str, str] | None,
    resolve: PathResolver,
) -> Reject | None:
    def reject(code: RejectCode, message: str, rid: str | None = None) -> Reject:
        return Reject(
            id=rid or sample.id,
            stage=Stage.INGEST,
            code=code,
            message=message,
            source=sample.source,
            origin=sample.origin,
        )

    rel = sample.video_path if sample.video_path is not None else sample.image_path
    assert rel is not None  # SourceSample holds exactly one of the two
    why = unsafe_media_path(rel, ctx.media_root, resolve)
    if why is not None:
        return reject(RejectCode.UNSAFE_PATH, why)
    # A reject of a taken id gets an id of its own (from its file and line), so the rejects
    # never share an id with a good row.
    own_id = sample_id(sample.source, sample.origin, "")
    first = kept.get(sample.id) or by_source_id.get(_source_id_key(sample))
    if first is not None:
        differ = _differences(first, sample)
        if not differ:
            return reject(
                RejectCode.DUPLICATE, f"duplicate of {first.id} ({first.origin}): the same record again", rid=own_id
            )
        return reject(
            RejectCode.DUPLICATE_ID,
            f"id {sample.source_id!r} ({sample.task.value}) is used by {first.origin} and {sample.origin} "
            f"with different {', '.join(differ[:4])}; {first.origin} was kept: give each record its own id",
            rid=own_id,
        )
    first = by_media.get(media_key) if media_key is not None else None
    if first is not None:
        return reject(
            RejectCode.DUPLICATE,
            f"duplicate of {first.id} ({first.source}, {first.origin}): same media file and question",
        )
    return None
