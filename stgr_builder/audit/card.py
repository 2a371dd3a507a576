"""The dataset card: ``README.md`` beside the shards, Hugging Face dataset-card style.

The card: YAML front matter with a config per dataset (``stgr_cot``, ``stgr_rl``) naming
its data files, then counts by task and source, the category shares beside the paper's,
rejects by reason, provenance (prompt versions, models, detector weights) and how to load.

>>> write_card(Path("out"), manifest)  # doctest: +SKIP
PosixPath('out/README.md')
"""

from __future__ import annotations

from pathlib import Path

import yaml

from stgr_builder.audit.views import connect
from stgr_builder.core.files import atomic_write_text
from stgr_builder.models import Manifest, Task

CARD = "README.md"

#: Category of each task, as the paper reports the mix.
CATEGORIES: dict[Task, str] = {
    Task.TEMPORAL: "temporal",
    Task.TEMPORAL_MCQ: "temporal",
    Task.VISUAL: "spatial",
    Task.SPATIO_TEMPORAL: "spatio-temporal",
    Task.VIDEO_MCQ: "general",
    Task.VIDEO_FREE: "general",
}
CATEGORY_ORDER = ["temporal", "spatial", "spatio-temporal", "general"]

#: The paper's category shares (percent) of the released datasets.
PAPER_SHARES: dict[str, dict[str, float]] = {
    "stgr_cot": {"temporal": 13.7, "spatial": 16.7, "spatio-temporal": 19.7, "general": 50.0},
    "stgr_rl": {"temporal": 14.4, "spatial": 13.9, "spatio-temporal": 30.3, "general": 41.7},
}
_TITLES = {"stgr_cot": "STGR-CoT (supervised fine-tuning)", "stgr_rl": "STGR-RL (reinforcement learning)"}


def category_shares(counts: dict[str, int]) -> dict[str, float]:
    """Percent per category from rows per task value.

    >>> category_shares({"visual QA": 1, "temporal QA": 3})["temporal"]
    75.0
    """
    total = sum(counts.values())
    shares = {c: 0.0 for c in CATEGORY_ORDER}
    for task, n in counts.items():
        shares[CATEGORIES[Task(task)]] += 100.0 * n / total if total else 0.0
    return shares


def card_text(root: Path, manifest: Manifest) -> str:
    con = connect(root)
    try:
        by = {
            view: con.execute(f"SELECT task, source, count(*) FROM {view} GROUP BY ALL ORDER BY 1, 2").fetchall()
            for view in ("cot", "rl")
        }
        rejects = con.execute("SELECT stage, code, count(*) FROM rejects GROUP BY ALL ORDER BY 3 DESC, 1, 2").fetchall()
    finally:
        con.close()
    datasets = {"stgr_cot": by["cot"], "stgr_rl": by["rl"]}
    present = [d for d, rows in datasets.items() if rows]
    front = {
        "pretty_name": f"STGR ({manifest.config.get('name', 'stgr')})",
        "task_categories": ["video-text-to-text", "visual-question-answering"],
        "tags": ["video", "grounding", "chain-of-thought", "spatio-temporal"],
        "configs": [
            {"config_name": d, "data_files": [{"split": "train", "path": f"{d}/part-*.parquet"}]} for d in present
        ],
    }
    out = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {front['pretty_name']}",
        "",
        "Spatio-temporally grounded chain-of-thought data in the layout of Open-o3 Video's STGR-CoT and "
        f"STGR-RL, built by stgr-builder {manifest.code_version} (build `{manifest.build_id}`).",
        "",
    ]
    for dataset in present:
        rows = datasets[dataset]
        total = sum(n for _, _, n in rows)
        per_task: dict[str, int] = {}
        for task, _, n in rows:
            per_task[task] = per_task.get(task, 0) + n
        out += [f"## {_TITLES[dataset]}: {total} rows", "", "| task | source | rows |", "|---|---|---:|"]
        out += [f"| {task} | {source} | {n} |" for task, source, n in rows]
        out += ["", "| task | rows |", "|---|---:|"] + [f"| {t} | {n} |" for t, n in sorted(per_task.items())]
        shares = category_shares(per_task)
        out += ["", "| category | share | paper |", "|---|---:|---:|"]
        out += [f"| {c} | {shares[c]:.1f}% | {PAPER_SHARES[dataset][c]:.1f}% |" for c in CATEGORY_ORDER]
        out += [
            "",
            "Categories: temporal = temporal QA + temporal QA (MCQ); spatial = visual QA; spatio-temporal "
            "= temporal-spatial free-form QA; general = General video QA MCQ + Free-form.",
            "",
        ]
    out += ["## Rejects by reason", "", "| stage | code | rejects |", "|---|---|---:|"]
    out += [f"| {stage} | {code} | {n} |" for stage, code, n in rejects] or ["| | (none) | 0 |"]
    annotator = manifest.config.get("annotator", {})
    detector = manifest.detector
    out += [
        "",
        "## Provenance",
        "",
        f"- build id: `{manifest.build_id}`; config hash: `{manifest.config_hash}`; seed: "
        f"{manifest.config.get('seed')}",
        "- prompts: " + ", ".join(f"`{p.name}@{p.version}`" for p in manifest.prompts),
        f"- annotator: {annotator.get('backend')} (model: {annotator.get('model') or 'none'})",
        f"- detector: {detector.get('name')}, weights `{detector.get('weights')}` "
        f"(sha256 `{detector.get('weights_hash')}`)",
        "- sources: " + ", ".join(f"{s['name']} ({s['adapter']})" for s in manifest.config.get("sources", [])),
        "- every row carries its own `provenance` struct; `manifest.json` lists the shards and checksums.",
        "",
    ]
    out += ["## How to load", "", "```python", "from datasets import load_dataset", ""]
    out += [f'{d} = load_dataset("parquet", data_files="{d}/part-*.parquet", split="train")' for d in present]
    out += ["```", "", "```sql", "-- DuckDB, from this folder"]
    out += [f"SELECT task, count(*) FROM '{d}/part-*.parquet' GROUP BY task;" for d in present]
    out += [
        "```",
        "",
        "`stgr audit .` prints the canned audit; `stgr export open-o3 . --to DIR` writes the JSON "
        "files the released Open-o3 Video training code reads. Key-frame JPEGs are under `kfs/`.",
        "",
    ]
    return "\n".join(out)


def write_card(root: Path, manifest: Manifest) -> Path:
    """Write ``README.md`` (the dataset card) beside the shards, atomically."""
    path = Path(root) / CARD
    atomic_write_text(path, card_text(root, manifest))
    return path
