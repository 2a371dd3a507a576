"""Compose the stages into a build, with no orchestrator in sight.

A build is a job of the shard executor (``executor.py``): ``plan`` (ingest every source and
deal the samples into shards by a hash of their id), ``execute_shard`` for each shard (probe ->
sample -> detect -> annotate -> verify -> write), then ``finalize`` (the manifest).
``build_job`` checks the config and resolves the build once; ``executor.run`` runs it on a
runner (``in_process``, or ``flows.build.flow_runner`` for the Prefect flow); ``build`` is the
two in one call.

>>> manifest = build(Path("CONFIG.yaml"), Path("outputs/run1"))  # doctest: +SKIP
>>> manifest.counts
{'cot': 41, 'rl': 41, 'rejects': 5}
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stgr_builder.core.files import check_writable
from stgr_builder.core.layout import budget_ledger
from stgr_builder.core.resources import Resources
from stgr_builder.errors import StgrError
from stgr_builder.executor import (
    BuildContext,
    ResolvedBuild,
    Runner,
    execute_shard,
    finish,
    in_process,
    resolve,
    run,
)
from stgr_builder.models import BuildConfig, BuildPlan, Manifest, Reject, ShardPlan, ShardResult, SourceSample
from stgr_builder.ownership import claim_folder
from stgr_builder.planning import build_shards, draw, draw_stats, plan_of, shard_of
from stgr_builder.recipes import read_config_mapping
from stgr_builder.shards import write_plan_json, write_plan_record
from stgr_builder.sources import check_sources, ingest
from stgr_builder.storage import is_url, remote_output
from stgr_builder.storage.media import list_sizes, media_location
from stgr_builder.storage.output import READ_SCOPE
from stgr_builder.video.steps import missing_media


def load_config(path: Path) -> BuildConfig:
    """Read and validate CONFIG.yaml; a typo is an error naming the key's path."""
    if not path.is_file():
        raise StgrError(f"config file not found: {path}")
    raw = read_config_mapping(path)
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '(top)'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise StgrError(f"{path}: {problems}") from exc


def context(config_path: Path, out: Path) -> BuildContext:
    """Load the config and check its sources (missing source files or media roots: one line,
    before any work starts); ``build_job`` checks and resolves the rest."""
    config_path = config_path.resolve()
    ctx = BuildContext(config=load_config(config_path), config_dir=config_path.parent, out=out.resolve())
    check_sources(ctx.config, ctx.config_dir)
    return ctx


def build_job(
    config_path: Path,
    out: Path,
    resources: Resources | None = None,
    *,
    sharding_runner: str | None = None,
    overwrite: bool = False,
    wait: bool = True,
) -> BuildJob:
    """The build of a config, checked before any work starts (what would fail every shard
    alike: missing sources, weights or prompt, a prompt of the other backend, an unwritable
    folder is the user's mistake: it ends the command, not each task) and resolved once
    (``executor.resolve``; the detector's model is loaded into ``resources``).
    ``sharding_runner`` overrides ``sharding.runner``; ``overwrite``: build over another build's
    folder; ``wait``: False returns once batches are submitted (``--no-wait``)."""
    ctx = replace(context(config_path, out), wait=wait)
    if sharding_runner is not None:
        sharding = ctx.config.sharding.model_copy(update={"runner": sharding_runner})
        ctx = replace(ctx, config=ctx.config.model_copy(update={"sharding": sharding}))
    resolved = resolve(ctx, resources)
    check_writable(ctx.out)  # read-only or full: one line now, not a failed task later
    return BuildJob(ctx, resolved, overwrite)


def plan(ctx: BuildContext) -> BuildPlan:
    """Ingest every source and deal samples into shards by id hash.

    Only samples that pass ingest and have a media file occupy shard slots: the number of
    shards (tasks, files) grows with them, never with the bad records read. Ingest rejects,
    and the probe's rejects of missing or empty media (found by a stat here), are dealt by
    id hash into those same shards (all into shard 0 when no sample passes): a handful of
    files however many they are, with the shards' exactly-once records."""
    samples, rejects, stats = ingest(ctx.config, ctx.config_dir)
    # Per-source `sample`: draw among the samples that pass the probe-time checks (planning.py);
    # plan.json records what the plan expects, for the audit's estimate-vs-actual table.
    drawn = draw(ctx.config, samples)
    write_plan_json(ctx.out, plan_of(ctx.config, samples, rejects, drawn=drawn))
    samples, rejects, stats = drawn[0], rejects + drawn[1], draw_stats(stats, drawn[0], drawn[1])
    samples, missing = split_missing_media(samples)
    rejects, stats = rejects + missing, draw_stats(stats, samples, missing)
    n_shards = build_shards(ctx.config, len(samples))
    shards = [ShardPlan(shard=index, samples=[], rejects=[]) for index in range(n_shards)]
    for sample in samples:
        shards[shard_of(sample.id, n_shards)].samples.append(sample)
    for reject in rejects:
        shards[shard_of(reject.id, n_shards)].rejects.append(reject)
    write_plan_record(ctx.out, n_shards)
    return BuildPlan(shards=shards, ingest=stats)


def split_missing_media(samples: list[SourceSample]) -> tuple[list[SourceSample], list[Reject]]:
    """(samples whose media file is there, the probe's rejects of the others). Media in a
    bucket are found by one listing per folder, not one request per file."""
    present: list[SourceSample] = []
    missing: list[Reject] = []
    locations = (media_location(s.media_root, s.video_path or s.image_path or "") for s in samples)
    listed = list_sizes(url for url in locations if is_url(url))
    for sample in samples:
        reject = missing_media(sample, listed)
        if reject is None:
            present.append(sample)
        else:
            missing.append(reject)
    return present, missing


@dataclass(frozen=True)
class BuildJob:
    """The full build as a job of the shard executor (``executor.run`` runs it)."""

    ctx: BuildContext
    resolved: ResolvedBuild
    overwrite: bool = False
    flow_name = "stgr-build"

    def claim(self) -> AbstractContextManager[Any]:
        return claim_folder(self.ctx.out, self.ctx.build_id, self.overwrite)

    def plan(self) -> BuildPlan:
        return plan(self.ctx)

    def run_shard(self, shard: ShardPlan, resources: Resources) -> ShardResult:
        return execute_shard(self.ctx, self.resolved, shard, resources)

    def moved(
        self, out: Path, shared: Path | str | None = None, fetch: Callable[[list[str]], object] | None = None
    ) -> BuildJob:
        """This job writing into ``out`` instead (a process's own copy of a URL's dataset): its
        run's budget ledger kept in ``shared`` (the dataset's URL, what the processes share;
        default ``out``); ``fetch``: that copy's read-through, when it holds only part of the
        dataset."""
        ctx = replace(self.ctx, out=out, fetch=fetch)
        ledger = budget_ledger(shared if shared is not None else out, ctx.run)
        return replace(self, ctx=ctx, resolved=replace(self.resolved, budget_ledger=ledger))

    def finalize(self, build_plan: BuildPlan, results: list[ShardResult], resources: Resources) -> Manifest:
        """Write the manifest once every shard is done."""
        return finish(
            self.ctx,
            self.resolved,
            results,
            prompts=self.resolved.prompts.refs,
            detector=self.resolved.detector,
            config_dir=str(self.ctx.config_dir),
            ingest=build_plan.ingest,
        )


def build(
    config_path: Path,
    out: Path | str,
    overwrite: bool = False,
    wait: bool = True,
    *,
    runner: Runner = in_process,
    sharding_runner: str | None = None,
) -> Manifest:
    """``build_job`` then ``executor.run``: the whole build on ``runner`` (default: in this
    process, shard after shard), holding the output folder's lock (``ownership.py``).

    ``out`` may be a URL (``s3://bucket/ds``, a ``str``): the build runs on a local staging
    copy and commits each shard, then the manifest, to the bucket, holding the prefix's lease
    (``storage/output.py``)."""
    resources = Resources()
    options: dict[str, Any] = {"sharding_runner": sharding_runner, "overwrite": overwrite, "wait": wait}
    if is_url(out):
        with remote_output(str(out)) as remote:
            job = build_job(config_path, remote.local, resources, **options)
            # Dask and Ray workers share nothing but the bucket (on a cluster, not even a disk):
            # each works on its own copy.
            isolated = job.ctx.config.sharding.runner in ("dask", "ray")
            manifest = run(remote.job(job, isolated=isolated), runner, resources)
            if isolated:  # this process's copy: what the workers committed, for the readers
                remote.mirror.pull(scope=READ_SCOPE)
            return manifest
    return run(build_job(config_path, Path(out), resources, **options), runner, resources)
