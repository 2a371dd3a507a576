"""Re-annotation: a new version of a dataset where the rows a SQL predicate selects are
annotated again (new prompt or model), and every other row is carried over unchanged.

    stgr reannotate outputs/demo --where "task = 'temporal QA'" --prompt stgr-cot-llm --model gpt-4o-mini

The predicate may select rejected samples too (the ``rejects`` view: id, stage, code, message,
source): they go through annotate and verify again, and become rows where the new prompt or
model fixes them (``audit --compare`` counts the rejects fixed):

    stgr reannotate outputs/demo --where "code IN ('llm_invalid_reply', 'crops_rejected')" --prompt my-v2.yaml

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

import json
import os
import re
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from stgr_builder.annotate import load_prompt
from stgr_builder.audit.views import check_read_only, connect
from stgr_builder.core.arrow import DATASETS, schema_for, table_to_rows
from stgr_builder.core.files import atomic_write_text
from stgr_builder.core.hashing import sha256_bytes, sha256_file
from stgr_builder.core.layout import MANIFEST, PROGRESS_DIR, load_manifest, shard_index
from stgr_builder.core.resources import Resources
from stgr_builder.errors import StgrError
from stgr_builder.executor import (
    BuildContext,
    Carried,
    ResolvedBuild,
    Runner,
    execute_shard,
    finish,
    in_process,
    resolve,
    run,
)
from stgr_builder.models import (
    BuildConfig,
    BuildPlan,
    Manifest,
    ParentRef,
    Reannotation,
    ShardPlan,
    ShardResult,
    SourceSample,
    StepStats,
)
from stgr_builder.ownership import locked_folder
from stgr_builder.shards import read_shard_result
from stgr_builder.sources import ingest
from stgr_builder.storage import is_url, open_dataset, remote_output

SPEC_FILE = "reannotate.json"
_VERSION_SUFFIX = re.compile(r"-v\d+$")


@dataclass(frozen=True)
class Selection:
    """What a ``--where`` predicate selects: ids of rows (``cot``, ``rl``) and ids of rejected
    samples (``rejects``: id, stage, code, message, source). Ingest rejects are never selected
    (a malformed or duplicate source row has no sample to annotate: fix the source and rebuild);
    ``ingest_skipped`` counts those the predicate matched."""

    rows: tuple[str, ...]
    rejects: tuple[str, ...]
    ingest_skipped: int = 0

    @property
    def ids(self) -> list[str]:
        return sorted(set(self.rows) | set(self.rejects))


def select(root: Path, where: str) -> Selection:
    """Run the predicate over the rows and over the rejects; it may name the columns of either
    (``task = 'temporal QA'``, ``code = 'llm_invalid_reply'``) or of both (``source``, ``id``).
    A predicate that fails on both is the user's error, in one line.

    >>> select(Path("outputs/demo"), "code IN ('llm_invalid_reply', 'crops_rejected')")  # doctest: +SKIP
    Selection(rows=(), rejects=('0a1b...', ...), ingest_skipped=0)
    """
    queries = {
        "rows": "SELECT DISTINCT id FROM (SELECT * FROM cot UNION ALL BY NAME SELECT * FROM rl) AS rows "
        f"WHERE ({where}) ORDER BY id",
        "rejects": f"SELECT id, bool_or(stage = 'ingest') FROM rejects WHERE ({where}) GROUP BY id ORDER BY id",
    }
    for sql in queries.values():
        check_read_only(sql)
    con = connect(root)
    found: dict[str, list] = {}
    errors: dict[str, str] = {}
    try:
        for name, sql in queries.items():
            try:
                found[name] = con.execute(sql).fetchall()
            except Exception as exc:  # duckdb.Error: a column of the other view, or a bad predicate
                errors[name] = str(exc).strip().splitlines()[0]
    finally:
        con.close()
    if not found:  # it fails on the rows and on the rejects: say why for the rows (the usual case)
        raise StgrError(f"--where {where!r} failed: {errors['rows']} (and over the rejects: {errors['rejects']})")
    rows = tuple(r[0] for r in found.get("rows", []))
    rejects = found.get("rejects", [])
    return Selection(
        rows=rows, rejects=tuple(r[0] for r in rejects if not r[1]), ingest_skipped=sum(1 for r in rejects if r[1])
    )


def select_ids(root: Path, where: str) -> list[str]:
    """Ids of the rows (``cot``, ``rl``) and rejected samples (``rejects``) that a SQL predicate
    selects, sorted (``select``).

    >>> select_ids(Path("outputs/demo"), "task = 'visual QA'")  # doctest: +SKIP
    ['0a1b...', ...]
    """
    return select(root, where).ids


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


@dataclass(frozen=True)
class ReannotateJob:
    """A re-annotation as a job of the shard executor: the parent's shards, each with its
    selected samples done again and its other rows carried over (``executor.Carried``);
    ``executor.run`` runs it."""

    ctx: BuildContext
    resolved: ResolvedBuild
    root: Path
    where: str
    selected: tuple[str, ...]
    samples: dict[str, SourceSample]
    parent_sha256: str
    rejects_selected: int = 0  # of ``selected``, samples the parent rejected
    parent_name: str = ""  # the parent's URL, when ``root`` is its read copy
    flow_name = "stgr-reannotate"

    def claim(self) -> AbstractContextManager[Any]:
        return locked_folder(self.ctx.out)

    def plan(self) -> BuildPlan:
        shards = []
        for index in sorted({shard_index(f.path) for f in load_manifest(self.root).shards}):
            record = read_shard_result(self.root, index)
            if record is None:
                raise StgrError(f"{self.root}: the record of shard {index} is missing; run `stgr verify {self.root}`")
            shards.append(
                ShardPlan(shard=index, samples=[self.samples[i] for i in record.sample_ids if i in self.samples])
            )
        return BuildPlan(shards=shards, ingest=StepStats(step="ingest"))

    def run_shard(self, shard: ShardPlan, resources: Resources) -> ShardResult:
        record = read_shard_result(self.root, shard.shard)
        if record is None:  # removed since the plan read it
            raise StgrError(f"{self.root}: the record of shard {shard.shard} is missing; run `stgr verify {self.root}`")
        carried = Carried(
            sample_ids=record.sample_ids,
            cot=_read_rows(self.root, "stgr_cot", shard.shard),
            rl=_read_rows(self.root, "stgr_rl", shard.shard),
            rejects=_read_rows(self.root, "rejects", shard.shard),
        )
        return execute_shard(self.ctx, self.resolved, shard, resources, carried)

    def finalize(self, plan: BuildPlan, results: list[ShardResult], resources: Resources) -> Manifest:
        parent = load_manifest(self.root)
        refs = self.resolved.prompts.refs
        return finish(
            self.ctx,
            self.resolved,
            results,
            prompts=list(parent.prompts) + [p for p in refs if p not in parent.prompts],
            detector=parent.detector,
            config_dir=parent.config_dir,
            parent=ParentRef(
                path=self.parent_name or str(self.root), build_id=parent.build_id, manifest_sha256=self.parent_sha256
            ),
            reannotation=Reannotation(
                where=self.where,
                prompt=refs[0],
                model=self.ctx.config.annotator.model or "template",
                selected=len(self.selected),
                rejects_selected=self.rejects_selected,
            ),
        )


def prepare(
    root: Path,
    *,
    where: str,
    prompt: str,
    model: str | None = None,
    out: Path | None = None,
    resources: Resources | None = None,
    parent_name: str = "",
) -> ReannotateJob:
    """Check the request, set up the new version's folder, and return the job that writes it,
    resolved once (``executor.resolve``: the detector's model loaded into ``resources``).

    Running it again with the same arguments finds the same folder: finished shards are kept
    and received LLM replies are cached, so it resumes and ends with the same files.
    ``parent_name``: what the parent is called when ``root`` is a URL's read copy (its URL),
    recorded instead of the copy's path.
    """
    root = Path(root).resolve()
    parent = load_manifest(root)
    if not parent.complete:
        raise StgrError(f"{root} is not complete ({parent.pending} samples pending): finish the build first")
    if parent.config_dir is None or not Path(parent.config_dir).is_dir():
        raise StgrError(
            f"{root}/{MANIFEST} does not say where the build's sources are (config_dir); "
            "rebuild it with this version of stgr"
        )
    config = BuildConfig.model_validate(parent.config)
    annotator = _annotator_config(config, prompt, model)
    config = config.model_copy(update={"annotator": annotator})
    new_prompt = load_prompt(annotator.prompt)
    selection = select(root, where)
    selected = selection.ids
    manifest_sha = sha256_file(root / MANIFEST)
    spec = {
        "parent": parent_name or str(root),
        "parent_manifest_sha256": manifest_sha,
        "where": where,
        "prompt": new_prompt.ref.model_dump(),
        "model": annotator.model or "template",
    }
    out = Path(out).resolve() if out is not None else default_out(root, spec)
    if out == root or out in lineage(root):
        raise StgrError(f"--out {out} is the dataset itself or one of its ancestors: give a new folder")
    existing = _read_spec(out)
    if out.exists() and any(out.iterdir()) and existing != spec:
        raise StgrError(f"{out} exists and holds something else: give another --out")
    atomic_write_text(out / PROGRESS_DIR / SPEC_FILE, json.dumps(spec, indent=2, sort_keys=True))

    salt = sha256_bytes(json.dumps([parent.build_id, where, selected]).encode())[:16]
    ctx = BuildContext(
        config=config, config_dir=Path(parent.config_dir), out=out, stage_parents=tuple(lineage(root)), salt=salt
    )
    resolved = resolve(ctx, resources)  # an unknown prompt or a missing model fails here
    link_tree(root / "kfs", out / "kfs")
    return ReannotateJob(
        ctx=ctx,
        resolved=resolved,
        root=root,
        where=where,
        selected=tuple(selected),
        samples=_selected_samples(ctx, set(selected)),
        parent_sha256=manifest_sha,
        rejects_selected=len(selection.rejects),
        parent_name=parent_name,
    )


def reannotate(
    root: Path | str,
    *,
    where: str,
    prompt: str,
    model: str | None = None,
    out: Path | str | None = None,
    runner: Runner = in_process,
) -> tuple[Path, Manifest]:
    """``prepare`` then ``executor.run``: a new version of the dataset in ``root`` with the
    selected rows re-annotated, on ``runner`` (default: in this process; ``stgr reannotate``
    runs the Prefect flow); returns the new version's folder and manifest.

    ``root`` and ``out`` may be URLs (``str``): the parent is read from its committed copy
    (``storage.open_dataset``, its stage store included), the new version is written on a
    staging copy committed shard by shard, holding the prefix's lease (``storage/output.py``).
    A URL parent needs an ``out``: there is no folder "beside" it to default to."""
    resources = Resources()
    options: dict[str, Any] = {"where": where, "prompt": prompt, "model": model, "resources": resources}
    if is_url(root):
        if out is None:
            raise StgrError(f"{root} is a URL: give the new version's --out (a folder or a URL)")
        options["parent_name"] = str(root).rstrip("/")
        root = open_dataset(root, with_stages=True)
    if out is not None and is_url(out):
        with remote_output(str(out)) as remote:
            job = prepare(Path(root), out=remote.local, **options)
            return job.ctx.out, run(remote.job(job), runner, resources)
    job = prepare(Path(root), out=None if out is None else Path(out), **options)
    return job.ctx.out, run(job, runner, resources)


def _annotator_config(config: BuildConfig, prompt: str, model: str | None):
    kind = load_prompt(prompt).content.get("kind", "template")
    backend = "openai" if kind == "llm" else "template"
    if backend == "template" and model is not None:
        raise StgrError(f"prompt {prompt!r} is a template prompt: it takes no --model")
    if backend == "openai":
        model = model or (config.annotator.model if config.annotator.backend == "openai" else None)
        if model is None:
            raise StgrError(f"prompt {prompt!r} is an LLM prompt: give --model")
    return config.annotator.model_copy(
        update={"backend": backend, "prompt": prompt, "model": model if backend == "openai" else None}
    )


def _selected_samples(ctx: BuildContext, selected: set[str]) -> dict:
    samples, _, _ = ingest(ctx.config, ctx.config_dir)
    found = {s.id: s for s in samples if s.id in selected}
    missing = selected - found.keys()
    if missing:
        raise StgrError(
            f"{len(missing)} selected rows are no longer in the sources (e.g. {sorted(missing)[0]}): "
            "the sources changed since the build"
        )
    return found


def _read_rows(root: Path, dataset: str, shard: int) -> list:
    path = root / dataset / f"part-{shard:05d}.parquet"
    model = DATASETS[dataset]
    return table_to_rows(pq.read_table(path, schema=schema_for(model)), model)


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


__all__ = [
    "ReannotateJob",
    "Selection",
    "default_out",
    "lineage",
    "link_tree",
    "prepare",
    "reannotate",
    "select",
    "select_ids",
]
