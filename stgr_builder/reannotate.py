"""Re-annotation: a new version of a dataset where the rows a SQL predicate selects are
annotated again (new prompt or model), and every other row is carried over unchanged.

    stgr reannotate outputs/demo --where "task = 'temporal QA'" --prompt stgr-cot-llm --model gpt-4o-mini

Only annotate, verify and write run for the selected ids: probe, frames and detections come
from the parent's stage store (``stages.py``), so no video is decoded and no detector runs.
The new version is a complete dataset folder beside the parent (``DIR-v2``, ``-v3``, ...):

    outputs/demo-v2/
      stgr_cot/ stgr_rl/ rejects/     same shard indices as the parent; carried rows byte-equal
      kfs/                            hard links to the parent's key frames (a copy across filesystems)
      _cache/stages/annotate/...      the new annotations (earlier stages are read from the parent)
      _cache/llm/...                  the new LLM replies (a killed re-annotation resumes for free)
      manifest.json                   parent (path, build_id, manifest sha256), reannotation (where,
                                      prompt, model, selected), prompts of both versions

A re-annotated row records the new prompt in its provenance, a new ``build_id`` (the
version's), and ``replaces``: the ``build_id`` of the row it replaces. The parent folder is
never written to.

>>> folder, manifest = reannotate(Path("outputs/demo"), where="hash(id) % 10 = 0",
...                               prompt="stgr-cot-llm", model="gpt-4o-mini")     # doctest: +SKIP
>>> folder, manifest.reannotation.selected, manifest.parent.build_id            # doctest: +SKIP
(PosixPath('/.../outputs/demo-v2'), 4, '3f9a0c12ab34')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from stgr_builder import __version__
from stgr_builder.annotate import load_prompt, make_annotator
from stgr_builder.annotate.llm import BudgetReached
from stgr_builder.audit.views import check_read_only, connect
from stgr_builder.errors import StgrError
from stgr_builder.models import (
    BuildConfig, CotRow, Manifest, ParentRef, PromptRef, Reannotation, Reject, RlRow, SampleWork, ShardResult,
)
from stgr_builder.pipeline import BuildContext, _llm_usage, shard_steps
from stgr_builder.shards.card import write_card
from stgr_builder.shards.arrow import DATASETS, schema_for, table_to_rows
from stgr_builder.shards.writer import (
    MANIFEST, PROGRESS_DIR, _atomic_write_text, finished_shard, load_manifest, read_shard_result, sha256_file,
    write_manifest, write_shard,
)
from stgr_builder.sources import ingest
from stgr_builder.steps import run_steps

SPEC_FILE = "reannotate.json"
_VERSION_SUFFIX = re.compile(r"-v\d+$")


def select_ids(root: Path, where: str) -> list[str]:
    """Ids of the rows (of ``cot`` or ``rl``) that a SQL predicate selects, sorted.

    The predicate sees every column of the rows (``reasoning_process`` is NULL for RL-only rows).

    >>> select_ids(Path("outputs/demo"), "task = 'visual QA'")  # doctest: +SKIP
    ['0a1b...', ...]
    """
    sql = ("SELECT DISTINCT id FROM (SELECT * FROM cot UNION ALL BY NAME SELECT * FROM rl) AS rows "
           f"WHERE ({where}) ORDER BY id")
    check_read_only(sql)
    con = connect(root)
    try:
        return [row[0] for row in con.execute(sql).fetchall()]
    except Exception as exc:  # duckdb.Error: a bad predicate is the user's, say so in one line
        raise StgrError(f"--where {where!r} failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()


def lineage(root: Path) -> list[Path]:
    """``root`` and its ancestors (each version's ``parent``), nearest first.

    >>> lineage(Path("outputs/demo-v3"))  # doctest: +SKIP
    [PosixPath('outputs/demo-v3'), PosixPath('outputs/demo-v2'), PosixPath('outputs/demo')]
    """
    chain = [Path(root).resolve()]
    while True:
        try:
            manifest = load_manifest(chain[-1])
        except StgrError:
            break
        if manifest.parent is None or Path(manifest.parent.path) in chain:
            break
        chain.append(Path(manifest.parent.path))
    return chain


def default_out(root: Path, spec: dict) -> Path:
    """The first sibling ``<name>-vK`` (K >= 2) that is free or holds this same re-annotation."""
    root = Path(root).resolve()
    base = _VERSION_SUFFIX.sub("", root.name)
    for k in range(2, 10_000):
        candidate = root.parent / f"{base}-v{k}"
        if not candidate.exists() or _read_spec(candidate) == spec:
            return candidate
    raise StgrError(f"no free version folder beside {root}")  # pragma: no cover


def _read_spec(out: Path) -> dict | None:
    try:
        return json.loads((out / PROGRESS_DIR / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def reannotate(root: Path, *, where: str, prompt: str, model: str | None = None,
               out: Path | None = None) -> tuple[Path, Manifest]:
    """Write a new version of the dataset in ``root`` with the selected rows re-annotated;
    returns the new version's folder and manifest.

    Running it again with the same arguments resumes (finished shards are kept, received
    LLM replies are cached) and ends with the same folder.
    """
    root = Path(root).resolve()
    parent = load_manifest(root)
    if not parent.complete:
        raise StgrError(f"{root} is not complete ({parent.pending} samples pending): finish the build first")
    if parent.config_dir is None or not Path(parent.config_dir).is_dir():
        raise StgrError(f"{root}/{MANIFEST} does not say where the build's sources are (config_dir); "
                        "rebuild it with this version of stgr")
    config = BuildConfig.model_validate(parent.config)
    annotator = _annotator_config(config, prompt, model)
    config = config.model_copy(update={"annotator": annotator})
    new_prompt = load_prompt(annotator.prompt)
    selected = select_ids(root, where)
    manifest_sha = sha256_file(root / MANIFEST)
    spec = {"parent": str(root), "parent_manifest_sha256": manifest_sha, "where": where,
            "prompt": new_prompt.ref.model_dump(), "model": annotator.model or "template"}
    out = Path(out).resolve() if out is not None else default_out(root, spec)
    if out == root or out in lineage(root):
        raise StgrError(f"--out {out} is the dataset itself or one of its ancestors: give a new folder")
    existing = _read_spec(out)
    if out.exists() and any(out.iterdir()) and existing != spec:
        raise StgrError(f"{out} exists and holds something else: give another --out")
    _atomic_write_text(out / PROGRESS_DIR / SPEC_FILE, json.dumps(spec, indent=2, sort_keys=True))

    salt = hashlib.sha256(json.dumps([parent.build_id, where, selected]).encode()).hexdigest()[:16]
    ctx = BuildContext(config=config, config_dir=Path(parent.config_dir), out=out,
                       stage_parents=tuple(lineage(root)), salt=salt)
    make_annotator(annotator, config.verify)  # an unknown prompt or a missing model fails here
    link_tree(root / "kfs", out / "kfs")
    samples = _selected_samples(ctx, set(selected))

    results = []
    for shard in sorted({_shard_index(f.path) for f in parent.shards}):
        results.append(_reannotate_shard(ctx, root, shard, samples))
    detector = parent.detector
    prompts = list(parent.prompts) + [p for p in _prompts(ctx) if p not in parent.prompts]
    manifest = write_manifest(
        out, build_id=ctx.build_id, code_version=__version__, config=config.model_dump(mode="json"),
        prompts=prompts, detector=detector, results=results, config_dir=parent.config_dir,
        parent=ParentRef(path=str(root), build_id=parent.build_id, manifest_sha256=manifest_sha),
        reannotation=Reannotation(where=where, prompt=new_prompt.ref, model=annotator.model or "template",
                                  selected=len(selected)))
    write_card(out, manifest)
    return out, manifest


def _annotator_config(config: BuildConfig, prompt: str, model: str | None):
    kind = load_prompt(prompt).content.get("kind", "template")
    backend = "openai" if kind == "llm" else "template"
    if backend == "template" and model is not None:
        raise StgrError(f"prompt {prompt!r} is a template prompt: it takes no --model")
    if backend == "openai":
        model = model or (config.annotator.model if config.annotator.backend == "openai" else None)
        if model is None:
            raise StgrError(f"prompt {prompt!r} is an LLM prompt: give --model")
    return config.annotator.model_copy(update={"backend": backend, "prompt": prompt,
                                               "model": model if backend == "openai" else None})


def _prompts(ctx: BuildContext) -> list[PromptRef]:
    annotator = make_annotator(ctx.config.annotator, ctx.config.verify)
    return list(getattr(annotator, "prompts", [annotator.prompt]))


def _selected_samples(ctx: BuildContext, selected: set[str]) -> dict:
    samples, _, _ = ingest(ctx.config, ctx.config_dir)
    found = {s.id: s for s in samples if s.id in selected}
    missing = selected - found.keys()
    if missing:
        raise StgrError(f"{len(missing)} selected rows are no longer in the sources (e.g. {sorted(missing)[0]}): "
                        "the sources changed since the build")
    return found


def _shard_index(path: str) -> int:
    return int(Path(path).stem.split("-")[1])


def _read_rows(root: Path, dataset: str, shard: int) -> list:
    path = root / dataset / f"part-{shard:05d}.parquet"
    model = DATASETS[dataset]
    return table_to_rows(pq.read_table(path, schema=schema_for(model)), model)


def _reannotate_shard(ctx: BuildContext, root: Path, shard: int, samples: dict) -> ShardResult:
    record = read_shard_result(root, shard)
    if record is None:
        raise StgrError(f"{root}: the record of shard {shard} is missing; run `stgr verify {root}`")
    ids = record.sample_ids
    mine = [samples[i] for i in ids if i in samples]
    done = finished_shard(ctx.out, shard, ids, ctx.build_id)
    if done is not None:
        return done
    old_cot: list[CotRow] = _read_rows(root, "stgr_cot", shard)
    old_rl: list[RlRow] = _read_rows(root, "stgr_rl", shard)
    old_rejects: list[Reject] = _read_rows(root, "rejects", shard)
    chosen = {s.id for s in mine}
    steps = shard_steps(ctx)
    try:
        items = run_steps((SampleWork(sample=s) for s in mine), steps) if mine else []
    except BudgetReached:
        return ShardResult(shard=shard, sample_ids=ids, files=[], stats=[s.stats for s in steps],
                           complete=False, llm=_llm_usage(steps))
    replaced = {row.id: row.provenance.build_id for row in old_cot + old_rl}
    cot = [row for row in old_cot if row.id not in chosen]
    rl = [row for row in old_rl if row.id not in chosen]
    rejects = [r for r in old_rejects if r.id not in chosen]
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        for row, bucket in ((item.cot_row, cot), (item.rl_row, rl)):
            if row is not None:
                row.provenance.replaces = replaced.get(row.id)
                bucket.append(row)
    return write_shard(ctx.out, shard, cot_rows=cot, rl_rows=rl, rejects=rejects, sample_ids=ids,
                       stats=[s.stats for s in steps] if mine else [], llm=_llm_usage(steps),
                       build_id=ctx.build_id)


def link_tree(source: Path, target: Path) -> int:
    """Hard-link every file under ``source`` to the same place under ``target`` (a copy where
    links are impossible); files already there are kept. Returns how many were added."""
    added = 0
    if not source.is_dir():
        return 0
    for path in source.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        dest = target / path.relative_to(source)
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
        added += 1
    return added


__all__ = ["default_out", "lineage", "link_tree", "reannotate", "select_ids"]
