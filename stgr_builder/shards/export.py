"""``stgr export open-o3 DIR --to DIR2``: the files the released Open-o3 Video training code reads.

That code (``src/r1-v/src/open_r1/sft_multi_task.py`` and ``grpo.py`` of
marinero4972/Open-o3-Video) loads JSON lists with ``Dataset.from_json`` from
``DATA_ROOT/json_data/`` and joins media paths with fixed folders under ``DATA_ROOT/videos/``;
key frames of ``STR_`` rows are read from ``videos/stgr/temporal_grounding/kfs/<path>``
(``videos/stgr/plm/kfs/`` for the source ``STR_plm_rdcap``). The export writes::

    DIR2/json_data/STGR-SFT.json          STGR-CoT rows (with reasoning_process)
    DIR2/json_data/STGR-RL.json           STGR-RL rows
    DIR2/videos/stgr/temporal_grounding/kfs/ab/ab12....jpg   key frames (hard links, else copies)
    DIR2/videos/stgr/plm/kfs/...                             key frames of STR_plm_rdcap rows

The export owns only what it wrote: ``DIR2/stgr-export.json`` records the dataset it came from
and the files it writes (recorded before they are written, so a killed export is still ours).
A non-empty ``DIR2`` without that record is refused (``overwrite``: export into it anyway, e.g.
beside the videos already put there); a JSON file the record does not list is never replaced,
``overwrite`` or not. Key frames are content-addressed and never replace an existing file.

Each sample is an object with the spec's fields: ``id``, ``task``, ``source``, ``question``,
``answer``, ``video_path`` or ``image_path`` (the one that is set), ``image_size`` (image
rows), ``key_frames`` ([{idx, time, path}], ``path`` relative to the kfs folder above),
``key_items`` ({str(idx): {name: [[x1, y1, x2, y2], ...]}}) and, in STGR-SFT only,
``reasoning_process``. Videos and images are not copied: put them under ``DIR2/videos/``
where the trainer looks (``tvg_r1/`` temporal QA, ``videor1/`` general video QA,
``treevgr/`` visual QA, ``stgr/temporal_grounding/videos/`` STR rows).

>>> export_open_o3(Path("outputs/demo"), Path("outputs/demo-open-o3"))   # doctest: +SKIP
{'STGR-SFT.json': 41, 'STGR-RL.json': 41}
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from stgr_builder.core.arrow import DATASETS, schema_for
from stgr_builder.core.files import atomic_write, atomic_write_text
from stgr_builder.core.layout import load_manifest
from stgr_builder.errors import StgrError

FILES = {"stgr_cot": "STGR-SFT.json", "stgr_rl": "STGR-RL.json"}
KFS_ROOTS = {"STR_plm_rdcap": "videos/stgr/plm/kfs"}
DEFAULT_KFS_ROOT = "videos/stgr/temporal_grounding/kfs"
_KFS_PREFIX = "kfs/"
#: The export's record of what it wrote (its ownership of the target folder).
EXPORT_RECORD = "stgr-export.json"


def data_files(root: Path, dataset: str) -> list[str]:
    """The shard files of a dataset folder that hold rows, from the manifest, for
    ``datasets.load_dataset("parquet", data_files=...)``.

    Every shard index has a file in each folder, an empty one included (no row group, the
    folder's one schema). ``datasets`` (4.x and 5.x) cannot read an empty Parquet file followed
    by a non-empty one (``IndexError`` in ``_prepare_split_single``); a glob works for folders
    without empty shards, this list for every folder.

    >>> load_dataset("parquet", data_files={"train": data_files(Path("out"), "rejects")})  # doctest: +SKIP
    """
    root = Path(root).resolve()
    return [str(root / f.path) for f in load_manifest(root).shards if f.path.startswith(f"{dataset}/") and f.rows > 0]


def kfs_root(source: str) -> str:
    """The folder (under the export root) the trainer reads a source's key frames from.

    >>> kfs_root("STR_plm_rdcap"), kfs_root("STR_activitynet")
    ('videos/stgr/plm/kfs', 'videos/stgr/temporal_grounding/kfs')
    """
    return KFS_ROOTS.get(source, DEFAULT_KFS_ROOT)


def open_o3_record(row: dict, *, sft: bool) -> dict:
    """One row (as read from a shard) in the released JSON form.

    >>> open_o3_record({"id": "a", "task": "temporal QA", "source": "TVG_x", "question": "q", "answer": "[1.0, 2.0]",
    ...                 "video_path": "v.mp4", "image_path": None, "image_size": None,
    ...                 "key_frames": [{"idx": 3, "time": 1.5, "path": "kfs/ab/ab.jpg"}],
    ...                 "key_items": [{"idx": 3, "name": "dog", "boxes": [[0.1, 0.2, 0.3, 0.4]]}],
    ...                 "reasoning_process": "r", "provenance": {}}, sft=True)["key_items"]
    {'3': {'dog': [[0.1, 0.2, 0.3, 0.4]]}}
    """
    record: dict = {
        "id": row["id"],
        "task": row["task"],
        "source": row["source"],
        "question": row["question"],
        "answer": row["answer"],
    }
    if row.get("video_path"):
        record["video_path"] = row["video_path"]
    if row.get("image_path"):
        record["image_path"] = row["image_path"]
        record["image_size"] = list(row["image_size"]) if row.get("image_size") else None
    record["key_frames"] = [
        {"idx": kf["idx"], "time": kf["time"], "path": _kf_rel(kf["path"])} for kf in row["key_frames"] or []
    ]
    items: dict[str, dict[str, list]] = {}
    for item in row["key_items"] or []:
        items.setdefault(str(item["idx"]), {}).setdefault(item["name"], []).extend([list(box) for box in item["boxes"]])
    record["key_items"] = items
    if sft:
        record["reasoning_process"] = row["reasoning_process"]
    return record


def _kf_rel(path: str) -> str:
    return path[len(_KFS_PREFIX) :] if path.startswith(_KFS_PREFIX) else path


def export_open_o3(root: Path, to: Path, overwrite: bool = False) -> dict[str, int]:
    """Write the Open-o3 JSON files and key-frame layout of the dataset in ``root`` under ``to``;
    returns the rows written per file. Shards are read one at a time and the JSON is streamed.
    ``to`` must be empty, new, or an earlier export of this dataset (``overwrite``: another
    export, or a folder with other files, whose files the export does not write)."""
    root, to = Path(root).resolve(), Path(to).resolve()
    manifest = load_manifest(root)  # a finished build only
    if to == root or root in to.parents:
        raise StgrError(f"--to {to} is inside the dataset folder: give a separate folder")
    claim_export(to, {"root": str(root), "build_id": manifest.build_id}, overwrite)
    written: dict[str, int] = {}
    linked: set[tuple[str, str]] = set()
    for dataset, name in FILES.items():
        written[name] = _write_json(root, dataset, to / "json_data" / name, to, linked)
    return written


def _write_json(root: Path, dataset: str, target: Path, to: Path, linked: set) -> int:
    """Stream one dataset's rows into ``target`` (and link their key frames); the row count."""
    model = DATASETS[dataset]
    count = 0
    with atomic_write(target) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8")
        handle.write("[")
        for part in sorted((root / dataset).glob("part-*.parquet")):
            for row in pq.read_table(part, schema=schema_for(model)).to_pylist():
                record = open_o3_record(row, sft=dataset == "stgr_cot")
                for kf in row["key_frames"] or []:
                    _link(root / kf["path"], to / kfs_root(row["source"]) / _kf_rel(kf["path"]), linked)
                handle.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                count += 1
        handle.write("\n]\n")
        handle.flush()
        handle.detach()  # the atomic writer closes the file
    return count


def claim_export(to: Path, origin: dict[str, str], overwrite: bool) -> None:
    """Check ``to`` is the export's to write, then record that it writes there (before any file).

    Refused (one line): a non-empty folder without an export record, or the export of another
    dataset, unless ``overwrite``; a JSON file the export would replace that no record lists,
    always."""
    files = [f"json_data/{name}" for name in FILES.values()]
    if to.exists() and not to.is_dir():
        raise StgrError(f"--to {to} is a file, not a folder")
    record = _read_export_record(to)
    owned = set(record.get("files", [])) if record else set()
    unowned = [name for name in files if (to / name).exists() and name not in owned]
    if unowned:
        raise StgrError(
            f"--to {to} holds {', '.join(unowned)}, which no stgr export wrote: it is not replaced, even with "
            f"--overwrite; move it away or give another --to"
        )
    if not overwrite:
        if record is None and to.is_dir() and any(to.iterdir()):
            raise StgrError(
                f"--to {to} is not empty and no stgr export wrote it: give an empty or new folder, or pass "
                f"--overwrite to export beside its files (none of them is replaced)"
            )
        if record is not None and {k: record.get(k) for k in origin} != origin:
            raise StgrError(
                f"--to {to} holds the export of {record.get('root')} (build {record.get('build_id')}): give another "
                f"--to, or pass --overwrite to replace it"
            )
    atomic_write_text(to / EXPORT_RECORD, json.dumps({**origin, "files": files}, indent=2) + "\n")


def _read_export_record(to: Path) -> dict | None:
    """The export record in ``to``; None when there is none (or it cannot be read: not ours)."""
    try:
        record = json.loads((to / EXPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), list) else None


def _link(source: Path, dest: Path, done: set) -> None:
    key = (str(source), str(dest))
    if key in done:
        return
    done.add(key)
    if dest.exists():
        return
    if not source.is_file():
        raise StgrError(f"key frame {source} is missing: run `stgr verify` on the dataset")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
