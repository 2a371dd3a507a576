"""Compose the stages into a build, with no orchestrator in sight.

A build is a job of the shard executor (``executor.py``): ``plan`` (ingest every source and
deal the samples into shards by a hash of their id), ``execute_shard`` for each shard (probe ->
sample -> detect -> annotate -> verify -> write), then ``finalize`` (the manifest).
``flows/build.py`` runs ``BuildJob`` as Prefect tasks; ``build`` runs it in a plain loop.

>>> manifest = build(Path("CONFIG.yaml"), Path("outputs/run1"))  # doctest: +SKIP
>>> manifest.counts
{'cot': 41, 'rl': 41, 'rejects': 5}
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from stgr_builder import __version__
from stgr_builder.annotate import make_annotator
from stgr_builder.annotate.llm import BUDGET_DIR
from stgr_builder.audit.card import write_card
from stgr_builder.core.files import check_writable
from stgr_builder.core.resources import Resources
from stgr_builder.detect import make_detector
from stgr_builder.errors import StgrError
from stgr_builder.executor import BuildContext, execute_shard, run_job
from stgr_builder.models import BuildConfig, BuildPlan, Manifest, Reject, ShardPlan, ShardResult, SourceSample
from stgr_builder.ownership import claim_folder
from stgr_builder.planning import build_shards, draw, draw_stats, plan_of, shard_of
from stgr_builder.recipes import read_config_mapping
from stgr_builder.shards import write_manifest, write_plan_json, write_plan_record
from stgr_builder.sources import check_sources, ingest
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


def context(config_path: Path, out: Path, resources: Resources | None = None) -> BuildContext:
    """Load the config and check, before any work starts, what would fail every shard alike
    (missing source files or media roots, missing weights, unknown prompt, a prompt of the other
    backend): a user's mistake ends the command, not each task. The
    detector's model is loaded into ``resources`` (the build's, when given: loaded once)."""
    config_path = config_path.resolve()
    ctx = BuildContext(config=load_config(config_path), config_dir=config_path.parent, out=out.resolve())
    check_sources(ctx.config, ctx.config_dir)  # a missing file or media root: one line, before the flow
    make_annotator(ctx.config.annotator, ctx.config.verify)  # cheap checks first: the detector loads a model
    make_detector(ctx.config.detector, ctx.config_dir, resources)
    check_writable(ctx.out)  # read-only or full: one line now, not a failed task later
    return ctx


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
    """(samples whose media file is there, the probe's rejects of the others)."""
    present: list[SourceSample] = []
    missing: list[Reject] = []
    for sample in samples:
        reject = missing_media(sample)
        if reject is None:
            present.append(sample)
        else:
            missing.append(reject)
    return present, missing


def finalize(
    ctx: BuildContext, build_plan: BuildPlan, results: list[ShardResult], resources: Resources | None = None
) -> Manifest:
    """Write the manifest once every shard is done."""
    detector = make_detector(ctx.config.detector, ctx.config_dir, resources)
    annotator = make_annotator(ctx.config.annotator, ctx.config.verify)
    manifest = write_manifest(
        ctx.out,
        build_id=ctx.build_id,
        code_version=__version__,
        config=ctx.config.model_dump(mode="json"),
        prompts=annotator.prompts,
        detector={"name": detector.name, "weights": ctx.config.detector.weights, "weights_hash": detector.weights_hash},
        results=results,
        ingest=build_plan.ingest,
        config_dir=str(ctx.config_dir),
    )
    write_card(ctx.out, manifest)
    (ctx.out / BUDGET_DIR / f"{ctx.run}.json").unlink(missing_ok=True)  # this run's budget ledger
    return manifest


@dataclass(frozen=True)
class BuildJob:
    """The full build as a job of the shard executor (``flows/build.py`` runs it on a task
    runner; ``build`` runs it here)."""

    ctx: BuildContext

    def plan(self) -> BuildPlan:
        return plan(self.ctx)

    def run_shard(self, shard: ShardPlan, resources: Resources) -> ShardResult:
        return execute_shard(self.ctx, shard, resources)

    def finalize(self, build_plan: BuildPlan, results: list[ShardResult], resources: Resources) -> Manifest:
        return finalize(self.ctx, build_plan, results, resources)


def build(config_path: Path, out: Path, overwrite: bool = False, wait: bool = True) -> Manifest:
    """The whole build in this process, shard after shard (no orchestrator), holding the
    output folder's lock (``ownership.py``; ``overwrite``: build over another build's folder)."""
    resources = Resources()
    ctx = replace(context(config_path, out, resources), wait=wait)
    with claim_folder(ctx.out, ctx.build_id, overwrite):
        return run_job(BuildJob(ctx), resources)
