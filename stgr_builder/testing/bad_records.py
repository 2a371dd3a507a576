"""Bad records at scale (a generic JSONL source whose records all fail at ingest or at the media
stat, four kinds in a seeded order): for the tests and ``bench/bad_records.py``.

>>> config = write_bad_records_source(Path("src"), 1000, seed=21)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BAD_RECORD_KINDS = ("cut_json", "no_fields", "missing_video", "path_escape")
#: The reject code each kind must give.
BAD_RECORD_CODES = {
    "cut_json": "malformed_row",
    "no_fields": "malformed_row",
    "missing_video": "media_missing",
    "path_escape": "unsafe_path",
}


def bad_record_lines(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (kind, JSONL line) pairs, a quarter of each kind, in a seeded order."""
    kinds = [BAD_RECORD_KINDS[i % len(BAD_RECORD_KINDS)] for i in range(n)]
    random.Random(seed).shuffle(kinds)
    lines = []
    for i, kind in enumerate(kinds):
        record = {"id": f"r{i}", "q": f"When does thing {i} happen?", "video": f"missing/{i}.mp4", "s": 1.0, "e": 2.5}
        if kind == "path_escape":
            record["video"] = f"../../outside/{i}.mp4"
        if kind == "no_fields":
            record = {"id": f"r{i}", "note": "a record without the mapped fields"}
        line = json.dumps(record)
        lines.append((kind, line[: len(line) // 2] if kind == "cut_json" else line))
    return lines


def write_bad_records_source(
    folder: Path, n_bad: int, seed: int = 0, n_good: int = 0, samples_per_shard: int = 16
) -> Path:
    """A folder with ``records.jsonl`` (``n_bad`` bad records, then ``n_good`` records whose
    video exists: a few non-empty bytes, enough for a plan, not for a build) and CONFIG.yaml
    (generic adapter, template annotator); returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "media").mkdir(exist_ok=True)
    lines = [line for _, line in bad_record_lines(n_bad, seed)]
    if n_good:
        (folder / "media" / "present.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
        lines += [
            json.dumps(
                {"id": f"g{i}", "q": f"When does good thing {i} happen?", "video": "present.mp4", "s": 1, "e": 2}
            )
            for i in range(n_good)
        ]
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "name": "bad-records",
        "sources": [
            {
                "name": "TVG_bad",
                "adapter": "generic",
                "path": "records.jsonl",
                "media_root": "media",
                "options": {
                    "format": "jsonl",
                    "task": "temporal QA",
                    "fields": {"id": "id", "question": "q", "video": "video", "start": "s", "end": "e"},
                },
            }
        ],
        "annotator": {"backend": "template"},
        "sharding": {"samples_per_shard": samples_per_shard, "workers": 2},
    }
    path = folder / "CONFIG.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path
