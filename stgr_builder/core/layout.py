"""Where things live in a dataset folder, and reading the small records there.

    <out>/manifest.json             MANIFEST: the finished build (``load_manifest``)
    <out>/plan.json                 PLAN: what the plan expected (``read_plan``)
    <out>/_progress/                PROGRESS_DIR: shard records, the shard count, run specs
    <out>/stgr_cot/ stgr_rl/ rejects/   part-NNNNN.parquet (``shard_path``)
    <out>/kfs/                      key-frame JPEGs, content-addressed
    <out>/_cache/                   CACHE_DIR: what a resumed run reuses, never part of the dataset
      stages/<stage>/..             STAGES_DIR: the stage store (``stages.py``)
      llm/..                        LLM_CACHE_DIR: the LLM request cache (``annotate/cache.py``)
      llm/formats/..                FORMATS_DIR: the response format each endpoint accepts
      batches/<intent>.json         BATCH_DIR: submitted Batch API jobs (``annotate/batch.py``)
      budget/<run>.json             BUDGET_DIR: one run's LLM budget ledger (``budget_ledger``)
      ratelimit.json                RATELIMIT_FILE: the build's request pacing (``annotate/ratelimit.py``)

The write stage (``stgr_builder.shards``) writes these; the audit, re-annotation and the CLI read
them through this module.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from stgr_builder.core.arrow import DATASETS
from stgr_builder.errors import StgrError
from stgr_builder.models import Manifest, Plan

PROGRESS_DIR = "_progress"
MANIFEST = "manifest.json"
PLAN = "plan.json"
CACHE_DIR = Path("_cache")
STAGES_DIR = CACHE_DIR / "stages"
LLM_CACHE_DIR = CACHE_DIR / "llm"
FORMATS_DIR = LLM_CACHE_DIR / "formats"
BATCH_DIR = CACHE_DIR / "batches"
BUDGET_DIR = CACHE_DIR / "budget"
RATELIMIT_FILE = CACHE_DIR / "ratelimit.json"


def budget_ledger(root: Path | str, run: str) -> Path | str:
    """The LLM budget ledger of one run (``run``: ``BuildContext.run``), shared by its processes:
    in a dataset folder, or (``root`` a URL) in the bucket, for workers that share nothing else.

    >>> budget_ledger(Path("out"), "r1"), budget_ledger("s3://b/ds/", "r1")
    (PosixPath('out/_cache/budget/r1.json'), 's3://b/ds/_cache/budget/r1.json')
    """
    from stgr_builder.storage.location import is_url  # here: storage imports this module

    if is_url(root):
        return f"{str(root).rstrip('/')}/{BUDGET_DIR.as_posix()}/{run}.json"
    return Path(root) / BUDGET_DIR / f"{run}.json"


def shard_path(root: Path, dataset: str, shard: int) -> Path:
    """Where one dataset's file of one shard lives.

    >>> shard_path(Path("out"), "stgr_cot", 3)
    PosixPath('out/stgr_cot/part-00003.parquet')
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: one of {sorted(DATASETS)}")
    return Path(root) / dataset / f"part-{shard:05d}.parquet"


def record_path(root: Path, shard: int) -> Path:
    """The completion record of a shard.

    >>> record_path(Path("out"), 3)
    PosixPath('out/_progress/shard-00003.json')
    """
    return Path(root) / PROGRESS_DIR / f"shard-{shard:05d}.json"


def intent_path(root: Path, shard: int) -> Path:
    """The files a shard is about to write, listed before it writes them (removed once its
    record is written): what a build killed mid-write left is still listed, so it is ours to
    remove and never taken for someone else's.

    >>> intent_path(Path("out"), 3)
    PosixPath('out/_progress/writing-00003.json')
    """
    return Path(root) / PROGRESS_DIR / f"writing-{shard:05d}.json"


def shard_index(path: str | Path) -> int:
    """The shard index of a ``part-NNNNN.parquet`` path.

    >>> shard_index("stgr_cot/part-00012.parquet")
    12
    """
    return int(Path(path).stem.split("-")[1])


def load_manifest(root: Path) -> Manifest:
    """The manifest of a finished build.

    >>> load_manifest(Path("out")).counts["stgr_cot"]  # doctest: +SKIP
    120
    """
    path = Path(root) / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StgrError(f"no {MANIFEST} in {root}: not a finished build (run `stgr build` to finish it)") from None
    except ValidationError as exc:
        raise StgrError(
            f"{path} is not a valid manifest: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}"
        ) from None


def read_plan(root: Path) -> Plan | None:
    """The plan a build recorded (``plan.json``), or None."""
    try:
        return Plan.model_validate_json((Path(root) / PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
