"""``stgr verify DIR``: hold a dataset folder against its manifest.

Checks, each a line of the report when it fails: the manifest reads and is complete; every
file it lists exists with its sha256 and its row count; each dataset folder holds no shard
file the manifest does not list; every key frame a row names exists and (unless
``key_frame_content=False``) its bytes hash to its content-addressed name
(``kfs/<2 hex>/<32 hex>.jpg``, the first 32 hex digits of the JPEG's sha256, see
``video/frames.py``); the counts add up.

>>> problems = verify_dataset(Path("outputs/demo"))   # doctest: +SKIP
>>> problems
[]
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq

from stgr_builder.core.arrow import DATASETS
from stgr_builder.core.hashing import sha256_file
from stgr_builder.core.layout import load_manifest
from stgr_builder.errors import StgrError

_KEY_FRAME = re.compile(r"kfs/([0-9a-f]{2})/(\1[0-9a-f]{30})\.jpg")


def verify_dataset(root: Path, *, key_frames: bool = True, key_frame_content: bool = True) -> list[str]:
    """Everything wrong with the dataset folder ``root``, one line each (empty: all good)."""
    root = Path(root)
    try:
        manifest = load_manifest(root)
    except StgrError as exc:
        return [str(exc)]
    problems: list[str] = []
    if not manifest.complete:
        problems.append(f"the build is not complete: {manifest.pending} samples pending")
    listed = {f.path for f in manifest.shards}
    counts = {dataset: 0 for dataset in DATASETS}
    broken: set[str] = set()  # datasets with a file already reported (their totals cannot add up)
    for file in manifest.shards:
        path = root / file.path
        dataset = file.path.split("/", 1)[0]
        if not path.is_file():
            problems.append(f"{file.path}: missing")
            broken.add(dataset)
            continue
        if sha256_file(path) != file.sha256:
            problems.append(f"{file.path}: sha256 differs from the manifest")
            broken.add(dataset)
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != file.rows:
            problems.append(f"{file.path}: {rows} rows, the manifest says {file.rows}")
        counts[dataset] += rows
    for dataset in DATASETS:
        for path in sorted((root / dataset).glob("part-*.parquet")):
            rel = path.relative_to(root).as_posix()
            if rel not in listed:
                problems.append(f"{rel}: not in the manifest")
        if dataset not in broken and counts[dataset] != manifest.counts.get(dataset, 0):
            problems.append(
                f"{dataset}: {counts[dataset]} rows in the files, the manifest counts {manifest.counts.get(dataset, 0)}"
            )
    if key_frames and not problems:
        missing, altered = _check_key_frames(root, manifest, key_frame_content)
        if missing:
            problems.append(f"{len(missing)} key-frame files named by rows are missing, e.g. {missing[0]}")
        if altered:
            problems.append(
                f"{len(altered)} key-frame files do not hash to their names (truncated or altered "
                f"since they were written), e.g. {altered[0]}"
            )
    return problems


def _check_key_frames(root: Path, manifest, content: bool) -> tuple[list[str], list[str]]:
    """(missing key frames named by the rows, stored frames whose bytes no longer hash to their name)."""
    missing: list[str] = []
    altered: list[str] = []
    seen: set[str] = set()
    for file in manifest.shards:
        if file.path.startswith("rejects/"):
            continue
        table = pq.read_table(root / file.path, columns=["key_frames"])
        for frames in table.column("key_frames").to_pylist():
            for frame in frames or []:
                path = frame["path"]
                if path in seen:
                    continue
                seen.add(path)
                if not (root / path).is_file():
                    missing.append(path)
                elif content and not _hashes_to_name(root, path):
                    altered.append(path)
    if content:
        # The other stored frames too (candidates, the track gate's neighbours): a re-annotation
        # reads them back instead of decoding again.
        others = (
            sorted(p.relative_to(root).as_posix() for p in (root / "kfs").rglob("*.jpg"))
            if (root / "kfs").is_dir()
            else []
        )
        altered += [path for path in others if path not in seen and not _hashes_to_name(root, path)]
    return missing, altered


def _hashes_to_name(root: Path, path: str) -> bool:
    match = _KEY_FRAME.fullmatch(path)
    return match is not None and sha256_file(root / path)[:32] == match.group(2)
