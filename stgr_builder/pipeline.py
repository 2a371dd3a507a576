"""Compose the stages into a build, with no orchestrator in sight.

A build is: ``plan`` (ingest every source and deal the samples into shards by a hash of
their id), ``run_shard`` for each shard (probe -> sample -> detect -> annotate -> verify ->
write), then ``finalize`` (the manifest). ``flows/build.py`` runs exactly these three
functions as Prefect tasks; ``build`` runs them in a plain loop.

>>> manifest = build(Path("CONFIG.yaml"), Path("outputs/run1"))  # doctest: +SKIP
>>> manifest.counts
{'cot': 41, 'rl': 41, 'rejects': 5}
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from stgr_builder import __version__
from stgr_builder.annotate import AnnotateStep, make_annotator
from stgr_builder.annotate.llm import BudgetReached
from stgr_builder.detect import DetectStep, make_detector
from stgr_builder.errors import StgrError
from stgr_builder.models import (
    BuildConfig, BuildPlan, LlmUsage, Manifest, Reject, SampleWork, ShardPlan, ShardResult, Stage)
from stgr_builder.planning import draw, draw_stats, plan_of
from stgr_builder.shards.card import write_card, write_plan_json
from stgr_builder.shards.writer import (
    config_hash, finished_shard, write_manifest, write_plan_record, write_shard)
from stgr_builder.sources import ingest
from stgr_builder.stages import StageStore, stored_steps
from stgr_builder.steps import Step, run_steps
from stgr_builder.verify.steps import VerifyStep
from stgr_builder.video.frames import FrameStore
from stgr_builder.video.steps import ProbeStep, SampleStep


@dataclass(frozen=True)
class BuildContext:
    """Everything a shard task needs, small enough to hand to any task runner."""

    config: BuildConfig
    config_dir: Path
    out: Path
    # Tells this run (one `context` call) from a later one: scopes the LLM budget, which is per
    # run. Never written anywhere, so outputs stay independent of it.
    run: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)
    # Dataset folders whose stage store this build may read (a re-annotated version reads its
    # parent's frames and detections); results are written under ``out`` only.
    stage_parents: tuple[Path, ...] = ()
    # Mixed into the build id when set: a re-annotated version gets its own id (lineage).
    salt: str = ""

    @property
    def build_id(self) -> str:
        """Hash of what decides the rows: derived, never a clock, so a resumed build writes
        the same rows as an uninterrupted one; knobs that only pace the build (workers,
        concurrency, budgets, timeouts) are left out, so changing them between runs of one
        build keeps one id."""
        settings = self.config.model_dump(mode="json", exclude=_PACING_SETTINGS)
        salt = f":{self.salt}" if self.salt else ""
        return hashlib.sha256(f"{config_hash(settings)}:{__version__}{salt}".encode()).hexdigest()[:12]


_PACING_SETTINGS = {
    "annotator": {"concurrency", "budget", "budget_tokens", "timeout", "max_retries"},
    "sharding": {"workers", "runner", "dask_address"},
    "estimate": True,
}


def load_config(path: Path) -> BuildConfig:
    """Read and validate CONFIG.yaml; a typo is an error naming the key's path."""
    if not path.is_file():
        raise StgrError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StgrError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return BuildConfig.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise StgrError(f"{path}: {problems}") from exc


def context(config_path: Path, out: Path) -> BuildContext:
    """Load the config and check, before any work starts, what would fail every shard alike
    (missing weights, unknown prompt): a user's mistake ends the command, not each task."""
    config_path = config_path.resolve()
    ctx = BuildContext(config=load_config(config_path), config_dir=config_path.parent, out=out.resolve())
    make_detector(ctx.config.detector, ctx.config_dir)
    make_annotator(ctx.config.annotator, ctx.config.verify)
    return ctx


def plan(ctx: BuildContext) -> BuildPlan:
    """Ingest every source and deal samples (and ingest rejects) into shards by id hash."""
    samples, rejects, stats = ingest(ctx.config, ctx.config_dir)
    # Per-source `sample`: draw among the samples that pass the probe-time checks (planning.py);
    # plan.json records what the plan expects, for the audit's estimate-vs-actual table.
    drawn = draw(ctx.config, samples)
    write_plan_json(ctx.out, plan_of(ctx.config, samples, rejects, drawn=drawn))
    samples, rejects, stats = drawn[0], rejects + drawn[1], draw_stats(stats, drawn[0], drawn[1])
    n_items = len(samples) + len(rejects)
    n_shards = max(1, -(-n_items // ctx.config.sharding.samples_per_shard))
    shards = [ShardPlan(shard=index, samples=[], rejects=[]) for index in range(n_shards)]
    for sample in samples:
        shards[shard_of(sample.id, n_shards)].samples.append(sample)
    for reject in rejects:
        shards[shard_of(reject.id, n_shards)].rejects.append(reject)
    write_plan_record(ctx.out, n_shards)
    return BuildPlan(shards=shards, ingest=stats)


def shard_of(item_id: str, n_shards: int) -> int:
    """Shard assignment is a hash of content, never of arrival order."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) % n_shards


def run_shard(ctx: BuildContext, shard: ShardPlan) -> ShardResult:
    """Run every per-sample stage over one shard and write its files; skip it if done."""
    done = finished_shard(ctx.out, shard.shard, shard.item_ids, ctx.build_id)
    if done is not None:
        return done
    steps = shard_steps(ctx)
    try:
        items = run_steps((SampleWork(sample=sample) for sample in shard.samples), steps)
    except BudgetReached:
        # Not a reject: nothing of this shard is written, and the next run finishes it (the
        # replies it already received are in the request cache, free the next time).
        return ShardResult(shard=shard.shard, sample_ids=shard.item_ids, files=[],
                           stats=[step.stats for step in steps], complete=False, llm=_llm_usage(steps))
    passed = [item for item in items if isinstance(item, SampleWork)]
    rejects = list(shard.rejects) + [item for item in items if isinstance(item, Reject)]
    return write_shard(
        ctx.out, shard.shard,
        cot_rows=[work.cot_row for work in passed if work.cot_row is not None],
        rl_rows=[work.rl_row for work in passed if work.rl_row is not None],
        rejects=rejects, sample_ids=shard.item_ids, stats=[step.stats for step in steps],
        llm=_llm_usage(steps), build_id=ctx.build_id)


def _llm_usage(steps: list[Step]) -> LlmUsage | None:
    """The shard's LLM requests and tokens (None when no step used an LLM)."""
    usages = [usage for step in steps if (usage := getattr(step, "llm_usage", None)) is not None]
    total = None
    for usage in usages:
        total = usage.merge(total)
    return total


def shard_steps(ctx: BuildContext) -> list[Step]:
    """The per-sample steps of a shard, each expensive one wrapped in the stage store
    (``stgr_builder/stages.py``) so a resumed shard runs only the samples it lacks."""
    config = ctx.config
    detector = make_detector(config.detector, ctx.config_dir)
    annotator = make_annotator(config.annotator, config.verify, root=ctx.out, run=ctx.run)
    provenance = {"detector_name": detector.name, "detector_weights_hash": detector.weights_hash,
                  "build_id": ctx.build_id}
    filters = {source.name: source.filters for source in config.sources}
    steps: list[Step] = [
        ProbeStep(filters),
        SampleStep(config.sampler, FrameStore(ctx.out, config.sampler.jpeg_quality)),
        # Remembers each distinct frame's detections across this process's shards (a frame
        # path names its bytes; the key holds all that decides the boxes): detected once.
        DetectStep(detector, ctx.out, batch_size=config.detector.batch, memo_key=_digest_json(
            [config.detector.model_dump(mode="json", exclude={"batch"}), detector.name, detector.weights_hash])),
        AnnotateStep(annotator),
        VerifyStep(config.verify, provenance),
    ]
    prompts = getattr(annotator, "prompts", [annotator.prompt])
    fingerprints = {
        Stage.PROBE: {name: f.model_dump(mode="json") for name, f in filters.items()},
        Stage.SAMPLE: config.sampler.model_dump(mode="json"),
        Stage.DETECT: [config.detector.model_dump(mode="json", exclude={"batch"}), detector.name,
                       detector.weights_hash],
        Stage.ANNOTATE: [config.annotator.model_dump(mode="json", exclude=_PACING_SETTINGS["annotator"]),
                         [p.model_dump(mode="json") for p in prompts], config.verify.model_dump(mode="json")],
    }
    return stored_steps(steps, StageStore(ctx.out, ctx.stage_parents), fingerprints, root=ctx.out)


def _digest_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def finalize(ctx: BuildContext, build_plan: BuildPlan, results: list[ShardResult]) -> Manifest:
    """Write the manifest once every shard is done."""
    detector = make_detector(ctx.config.detector, ctx.config_dir)
    annotator = make_annotator(ctx.config.annotator, ctx.config.verify)
    manifest = write_manifest(
        ctx.out, build_id=ctx.build_id, code_version=__version__,
        config=ctx.config.model_dump(mode="json"), prompts=getattr(annotator, "prompts", [annotator.prompt]),
        detector={"name": detector.name, "weights": ctx.config.detector.weights,
                  "weights_hash": detector.weights_hash},
        results=results, ingest=build_plan.ingest, config_dir=str(ctx.config_dir))
    write_card(ctx.out, manifest)
    return manifest


def build(config_path: Path, out: Path) -> Manifest:
    """The whole build in this process, shard after shard (no orchestrator)."""
    ctx = context(config_path, out)
    build_plan = plan(ctx)
    results = [run_shard(ctx, shard) for shard in build_plan.shards]
    return finalize(ctx, build_plan, results)
