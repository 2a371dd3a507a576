"""The write stage: Parquet shards, completion records and the manifest, all atomic.

Layout under the dataset root::

    stgr_cot/part-00000.parquet     one file per shard index in each of the three folders,
    stgr_rl/part-00000.parquet      written even when empty, all with the folder's one schema
    rejects/part-00000.parquet
    kfs/...                         key-frame JPEGs (written by the sample stage)
    _progress/shard-00000.json      the shard's ShardResult, written LAST: the shard is done
    manifest.json                   build config and hash, counts, per-file rows and sha256

Every file is written under a hidden temporary name in its own folder (``.NAME.<hex>.tmp``,
which no ``part-*.parquet`` glob matches) and renamed with ``os.replace`` when complete, so a
reader never sees half a file and a killed build leaves at worst a stray temp file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from stgr_builder.core.arrow import DATASETS, rows_to_table, schema_for
from stgr_builder.core.files import atomic_write_text, atomic_write_with, remove_files, temp_files, temp_glob
from stgr_builder.core.hashing import digest, sha256_file
from stgr_builder.core.layout import MANIFEST, PLAN, PROGRESS_DIR, intent_path, record_path, shard_path
from stgr_builder.errors import StgrError
from stgr_builder.models import (
    CotRow,
    LlmUsage,
    Manifest,
    Plan,
    PromptRef,
    Reject,
    RlRow,
    ShardFile,
    ShardResult,
    StepStats,
)

COMPRESSION = "zstd"


def _write_parquet(path: Path, table: pa.Table) -> str:
    return atomic_write_with(path, lambda temp: _parquet(table, temp))


def _parquet(table: pa.Table, path: Path) -> None:
    if table.num_rows:
        pq.write_table(table, path, compression=COMPRESSION)
        return
    # An empty shard gets no row group at all: `pq.write_table` would write one of 0 rows,
    # which `datasets.load_dataset("parquet")` refuses ("BatchSize must be greater than 0").
    with pq.ParquetWriter(path, table.schema, compression=COMPRESSION):
        pass


def clean_temp_files(root: Path) -> list[Path]:
    """Remove every stray temp file a killed build left; returns what was removed.

    Only call it when no shard task is writing (at the start or end of a build): a running
    task's temp file looks just like a stray one.

    >>> clean_temp_files(Path("out"))  # doctest: +SKIP
    [PosixPath('out/stgr_cot/.part-00004.parquet.3f9a....tmp')]
    """
    root = Path(root)
    folders = [root, root / PROGRESS_DIR, *(root / dataset for dataset in DATASETS)]
    # Only the writer's own temp names (``.NAME.<32 hex>.tmp``): a user's hidden file stays.
    return remove_files(path for folder in folders for path in temp_files(folder) if _OUR_TEMP.match(path.name))


_OUR_TEMP = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


def _clean_shard_temp_files(root: Path, shard: int) -> list[Path]:
    # Only this shard's names: other shard tasks may be writing beside it right now.
    targets = [shard_path(root, dataset, shard) for dataset in DATASETS] + [record_path(root, shard)]
    return remove_files(
        p for target in targets if target.parent.is_dir() for p in target.parent.glob(temp_glob(target))
    )


# ---------------------------------------------------------------------------------------
# Secrets guard
# ---------------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"API_KEY|SECRET|PASSWORD|TOKEN", re.IGNORECASE)
_MIN_SECRET_LEN = 8  # shorter values ("EMPTY", "false") would match innocent text


def assert_no_secrets(text: str, where: str) -> None:
    """Refuse text that contains the value of an env var named like *API_KEY* (or secret,
    token, password). The error names the variable, never its value.

    >>> assert_no_secrets('{"model": "gpt-4o"}', where="manifest.json")  # returns None
    """
    for name, value in os.environ.items():
        if not _SECRET_NAME.search(name) or len(value) < _MIN_SECRET_LEN:
            continue
        if value in text or json.dumps(value)[1:-1] in text:
            raise StgrError(f"refusing to write {where}: it contains the value of ${name}")


# ---------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------


def write_shard(
    root: Path,
    shard: int,
    cot_rows: list[CotRow],
    rl_rows: list[RlRow],
    rejects: list[Reject],
    sample_ids: list[str],
    stats: list[StepStats],
    llm: LlmUsage | None = None,
    build_id: str | None = None,
    inputs: str | None = None,
) -> ShardResult:
    """Write one shard's three Parquet files, then its completion record, all atomically.

    Rows are sorted by id so the bytes do not depend on the order samples finished in:
    a shard written twice has the same checksums.

    >>> result = write_shard(Path("out"), 0, cot, rl, rejects, ids, stats)  # doctest: +SKIP
    >>> [(f.path, f.rows) for f in result.files]  # doctest: +SKIP
    [('stgr_cot/part-00000.parquet', 12), ('stgr_rl/part-00000.parquet', 12), ('rejects/part-00000.parquet', 3)]
    """
    root = Path(root)
    ids = sorted(sample_ids)
    _check_rows(cot_rows, "stgr_cot", set(ids))
    _check_rows(rl_rows, "stgr_rl", set(ids))
    # The old record goes first: while the files are being replaced the shard is not done. The
    # files about to be written are listed first (a kill mid-write leaves them listed: ours).
    targets = [shard_path(root, dataset, shard).relative_to(root).as_posix() for dataset in DATASETS]
    atomic_write_text(intent_path(root, shard), json.dumps({"shard": shard, "files": [{"path": t} for t in targets]}))
    record_path(root, shard).unlink(missing_ok=True)
    _clean_shard_temp_files(root, shard)
    cot_sorted = sorted(cot_rows, key=lambda row: row.id)
    rl_sorted = sorted(rl_rows, key=lambda row: row.id)
    # Stage and RejectCode are str enums: a member sorts as its value (``.value`` per reject,
    # 100,000 times, costs more than the sort).
    rejects_sorted = sorted(rejects, key=lambda r: (r.id, r.stage, r.code, r.message))
    ordered: dict[str, Sequence[BaseModel]] = {"stgr_cot": cot_sorted, "stgr_rl": rl_sorted, "rejects": rejects_sorted}
    files = [_write_dataset_file(root, dataset, shard, rows) for dataset, rows in ordered.items()]
    result = ShardResult(
        shard=shard, sample_ids=ids, files=files, stats=stats, llm=llm, build_id=build_id, inputs=inputs
    )
    text = result.model_dump_json(indent=2)
    assert_no_secrets(text, where=f"the record of shard {shard}")
    atomic_write_text(record_path(root, shard), text)
    intent_path(root, shard).unlink(missing_ok=True)
    return result


def _check_rows(rows: Sequence[CotRow | RlRow], dataset: str, sample_ids: set[str]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise ValueError(f"{dataset}: id {row.id} appears twice in one shard")
        if row.id not in sample_ids:
            raise ValueError(f"{dataset}: row {row.id} is not one of the shard's sample ids")
        seen.add(row.id)


def _write_dataset_file(root: Path, dataset: str, shard: int, rows: Sequence[BaseModel]) -> ShardFile:
    table = rows_to_table(rows, DATASETS[dataset])
    path = shard_path(root, dataset, shard)
    digest = _write_parquet(path, table)
    return ShardFile(path=path.relative_to(root).as_posix(), rows=table.num_rows, sha256=digest)


def read_shard_result(root: Path, shard: int) -> ShardResult | None:
    """The completion record of a shard as written, without checking its files; None when
    missing or unreadable.

    >>> read_shard_result(Path("out"), 0).shard  # doctest: +SKIP
    0
    """
    path = record_path(root, shard)
    try:
        return ShardResult.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def finished_shard(
    root: Path, shard: int, sample_ids: list[str], build_id: str | None = None, inputs: str | None = None
) -> ShardResult | None:
    """The shard's result if it is done for exactly these samples, else None (so: rewrite it).

    Done means: the record exists, lists the same sample ids (and, when ``build_id`` is
    given, was written by that build: a changed config rewrites the shard, from the stage
    store where the change left stages untouched; when ``inputs`` is given, was made from the
    same samples and media content: a replaced video rewrites its shards), names one file per
    dataset, and every file is present with the recorded sha256.

    >>> finished_shard(Path("out"), 0, ids)  # doctest: +SKIP
    ShardResult(shard=0, sample_ids=[...], files=[...], stats=[...])
    >>> finished_shard(Path("out"), 0, other_ids) is None  # doctest: +SKIP
    True
    """
    root = Path(root)
    result = read_shard_result(root, shard)
    if result is None or result.shard != shard or result.sample_ids != sorted(sample_ids):
        return None
    if build_id is not None and result.build_id != build_id:
        return None
    if inputs is not None and result.inputs != inputs:
        return None
    expected = {shard_path(root, dataset, shard).relative_to(root).as_posix() for dataset in DATASETS}
    if sorted(f.path for f in result.files) != sorted(expected):
        return None
    for file in result.files:
        path = root / file.path
        if not path.is_file() or sha256_file(path) != file.sha256:
            return None
    return result


def read_table(root: Path, dataset: str) -> pa.Table:
    """All shards of one dataset as one table with its fixed schema (empty if no shards).

    >>> read_table(Path("out"), "stgr_cot").num_rows  # doctest: +SKIP
    120
    """
    schema = schema_for(DATASETS[dataset])
    parts = sorted((Path(root) / dataset).glob("part-*.parquet"))
    tables = [pq.read_table(part, schema=schema) for part in parts]
    return pa.concat_tables(tables) if tables else schema.empty_table()


# ---------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------


def merge_stats(results: list[ShardResult]) -> list[StepStats]:
    """Per-step totals over all shards, steps in the order they first appear.

    >>> [s.seen for s in merge_stats(results)]  # doctest: +SKIP
    [120, 118, 118, 110, 104]
    """
    merged: dict[str, StepStats] = {}
    for result in results:
        for stats in result.stats:
            merged[stats.step] = merged[stats.step].merge(stats) if stats.step in merged else stats
    return list(merged.values())


def write_manifest(
    root: Path,
    *,
    build_id: str,
    code_version: str,
    config: dict,
    prompts: list[PromptRef],
    detector: dict,
    results: list[ShardResult],
    ingest: StepStats | None = None,
    prune: bool = True,
    **extra,
) -> Manifest:
    """Write ``manifest.json`` for the shards in ``results`` (atomically) and return it.
    ``extra``: further ``Manifest`` fields (``config_dir``, ``parent``, ``reannotation``).

    With ``prune`` (the default) call it once, after every shard task has finished: it also
    removes stray temp files and any shard file or record whose shard is not in ``results``
    (left by an earlier build of the same folder with more shards), so the views see
    exactly the manifest's files.

    >>> m = write_manifest(Path("out"), build_id="b1", code_version="0.1.0", config=cfg,
    ...                    prompts=[], detector={"name": "yolo"}, results=results)  # doctest: +SKIP
    >>> m.counts  # doctest: +SKIP
    {'stgr_cot': 120, 'stgr_rl': 120, 'rejects': 7, 'samples': 127}
    """
    root = Path(root)
    results = _sorted_results(results)
    # Shards the LLM budget stopped, or with samples a transient failure left pending, wrote
    # nothing: the manifest lists what is done, says how many samples are left and why, and
    # the next run completes it.
    unfinished = [r for r in results if not r.complete]
    results = [r for r in results if r.complete]
    _check_files_exist(root, results)
    if prune:
        clean_temp_files(root)
        prune_orphans(root, results)
    files = sorted((f for r in results for f in r.files), key=lambda f: f.path)
    manifest = Manifest(
        build_id=build_id,
        code_version=code_version,
        config=config,
        config_hash=digest(config),
        prompts=prompts,
        detector=detector,
        counts=_counts(results),
        shards=files,
        stats=([ingest] if ingest is not None else []) + merge_stats(results),
        complete=not unfinished,
        pending=sum(len(r.sample_ids) for r in unfinished),
        pending_reasons=_pending_reasons(unfinished),
        llm=LlmUsage.total([result.llm for result in results + unfinished]),
        **extra,
    )
    text = manifest.model_dump_json(indent=2)
    assert_no_secrets(text, where=MANIFEST)
    atomic_write_text(root / MANIFEST, text)
    return manifest


def _pending_reasons(unfinished: list[ShardResult]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for result in unfinished:
        for reason, count in (result.pending or {"budget": len(result.sample_ids)}).items():
            reasons[reason] = reasons.get(reason, 0) + count
    return dict(sorted(reasons.items()))


def _sorted_results(results: list[ShardResult]) -> list[ShardResult]:
    ordered = sorted(results, key=lambda r: r.shard)
    shards = [r.shard for r in ordered]
    if len(set(shards)) != len(shards):
        raise ValueError(f"a shard index appears twice in the results: {shards}")
    return ordered


def _check_files_exist(root: Path, results: list[ShardResult]) -> None:
    missing = [f.path for r in results for f in r.files if not (root / f.path).is_file()]
    if missing:
        raise StgrError(f"shard files missing under {root}: {missing[:5]}; run the build again to rewrite them")


def _counts(results: list[ShardResult]) -> dict[str, int]:
    counts = {dataset: 0 for dataset in DATASETS}
    for result in results:
        for file in result.files:
            counts[file.path.split("/", 1)[0]] += file.rows
    counts["samples"] = sum(len(r.sample_ids) for r in results)
    return counts


def prune_orphans(root: Path, results: list[ShardResult]) -> list[Path]:
    """Remove shard files and records of shards not in ``results``; returns what went.

    Only files that the folder's manifest or a shard record lists are removed (an earlier build
    of the same folder with more shards): a ``part-*.parquet`` that no stgr record names is
    someone else's and stays.

    >>> prune_orphans(Path("out"), results)  # doctest: +SKIP
    [PosixPath('out/rejects/part-00009.parquet'), ...]
    """
    root = Path(root)
    keep = {root / f.path for r in results for f in r.files}
    keep |= {record_path(root, r.shard) for r in results}
    records = sorted((root / PROGRESS_DIR).glob("shard-*.json"))
    intents = sorted((root / PROGRESS_DIR).glob("writing-*.json"))  # left by a kill mid-write
    listed = {root / f.path for record in records if (result := _read_record(record)) is not None for f in result.files}
    for intent in intents:
        try:
            listed |= {root / f["path"] for f in json.loads(intent.read_text(encoding="utf-8"))["files"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    try:
        listed |= {root / f["path"] for f in json.loads((root / MANIFEST).read_text(encoding="utf-8"))["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    candidates = [p for dataset in DATASETS for p in (root / dataset).glob("part-*.parquet") if p in listed]
    removed = remove_files(p for p in candidates if p not in keep)
    # then the records of the shards that are gone (the files they list went first)
    return removed + remove_files([*(p for p in records if p not in keep), *intents])


def _read_record(path: Path) -> ShardResult | None:
    try:
        return ShardResult.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def write_plan_record(root: Path, n_shards: int) -> None:
    """Record how many shards this build has, so a watcher can show progress."""
    atomic_write_text(Path(root) / PROGRESS_DIR / "plan.json", json.dumps({"shards": n_shards}))


def progress(root: Path) -> tuple[int, int | None]:
    """(shards done, shards planned or None before planning) of a build in ``root``.

    >>> progress(Path("outputs/demo"))  # doctest: +SKIP
    (3, 3)
    """
    folder = Path(root) / PROGRESS_DIR
    try:
        total = json.loads((folder / "plan.json").read_text())["shards"]
    except (OSError, ValueError, KeyError):
        total = None
    return len(list(folder.glob("shard-*.json"))), total


def write_plan_json(root: Path, plan: Plan) -> Path:
    """Record what the plan expects of the build (``plan.json``, read by the audit)."""
    path = Path(root) / PLAN
    atomic_write_text(path, plan.model_dump_json(indent=2))
    return path
