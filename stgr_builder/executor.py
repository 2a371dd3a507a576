"""The one shard executor: what a shard task does, for a build and for a re-annotation alike.

A shard runs its samples through the per-sample steps (probe -> sample -> detect -> annotate ->
verify), each expensive step wrapped in the stage store so a resumed shard runs only what it
lacks, then writes the shard's files. A re-annotation is the same shard with rows carried over
from the parent version (``Carried``): the rows it re-does are replaced, the others kept as
they are.

A *job* is ``plan`` -> ``run_shard`` per shard -> ``finalize``. ``pipeline.BuildJob`` and
``reannotate.ReannotateJob`` are the two jobs. What a job's shards share is resolved once, before
any shard runs (``resolve``: the detector's identity and weights hash, the prompts, the stage
fingerprints, the run's budget ledger), carried to every shard task and to ``finalize``; both
jobs finish through one ``finish``.

``run(job, runner)`` is the one entry: it holds the job's output folder and hands the job to a
*runner*: ``in_process`` (shard after shard, no orchestrator) or ``flows.build.flow_runner``
(the Prefect flow on the config's task runner).

>>> manifest = run(build_job(Path("CONFIG.yaml"), Path("out")), in_process)   # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from stgr_builder import __version__
from stgr_builder.annotate import AnnotateStep, AnnotatorPrompts, make_annotator, resolve_prompts
from stgr_builder.audit.card import write_card
from stgr_builder.core.arrow import rows_adapter
from stgr_builder.core.codehash import code_digest
from stgr_builder.core.hashing import digest, sha256_bytes
from stgr_builder.core.layout import budget_ledger
from stgr_builder.core.resources import Resources
from stgr_builder.core.steps import Deferred, Step, run_steps
from stgr_builder.detect import DetectStep, make_detector
from stgr_builder.models import (
    BuildConfig,
    BuildPlan,
    ChecksConfig,
    CotRow,
    GoldConfig,
    JudgeConfig,
    LlmUsage,
    Manifest,
    PromptRef,
    Reject,
    RejectCode,
    RlRow,
    SampleWork,
    ShardPlan,
    ShardResult,
    SpanCheckConfig,
    Stage,
    StepStats,
    TrackConfig,
)
from stgr_builder.shards import finished_shard, write_manifest, write_shard
from stgr_builder.stages import StageStore, sample_inputs, stored_steps
from stgr_builder.storage.ledger import discard
from stgr_builder.storage.media import MediaFiles
from stgr_builder.verify.inherited import GoldCheckStep, SpanCheckStep
from stgr_builder.verify.steps import TrackGateStep, VerifyStep
from stgr_builder.video.frames import FrameStore
from stgr_builder.video.steps import ProbeStep, SampleStep

#: Config knobs that only pace a build (workers, concurrency, budgets, timeouts): left out of
#: the build id and of the stage fingerprints, so changing them between runs keeps one build.
PACING_SETTINGS: dict[str, Any] = {  # a pydantic ``exclude``
    "annotator": {
        "concurrency",
        "budget",
        "budget_tokens",
        "timeout",
        "max_retries",
        "dead_endpoint_s",
        "rpm",
        "tpm",
        "prepare_processes",
        "mode",
        "batch_max_requests",
        "batch_max_bytes",
        "batch_poll_s",
        "batch_reask",
    },
    "sharding": {"workers", "runner", "dask_address", "ray_address"},
    "estimate": True,
    "cache": True,
}

#: Left out of the build id as well: where the sources are read from. What they hold enters each
#: shard's ``inputs`` digest (records and media fingerprints), so the same data in another folder
#: or machine is the same build, and changed data rewrites exactly the shards it touches.
BUILD_ID_EXCLUDES: dict[str, Any] = {**PACING_SETTINGS, "sources": {"__all__": {"path", "media_root", "upstreams"}}}


#: Settings added after builds existed: left out of the build id while they hold their
#: defaults, so a config that does not use them keeps its build id (and its rows' bytes).
LATER_SETTINGS: tuple[tuple[str | None, str, Any], ...] = (
    ("annotator", "checks", ChecksConfig().model_dump(mode="json")),
    ("annotator", "judge", JudgeConfig().model_dump(mode="json")),
    (None, "span_check", SpanCheckConfig().model_dump(mode="json")),
    (None, "gold", GoldConfig().model_dump(mode="json")),
    ("track", "staged", TrackConfig.model_fields["staged"].default),
    ("detector", "runtime", "torch"),
)


def drop_defaults(settings: dict[str, Any]) -> None:
    """``settings`` (a config's JSON dump) without the ``LATER_SETTINGS`` at their defaults."""
    for section, key, default in LATER_SETTINGS:
        part = settings if section is None else settings.get(section, {})
        if key in part and part[key] == default:
            del part[key]


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
    # Batch mode: wait for submitted batches (False: ``--no-wait``, their shards stay pending).
    wait: bool = field(default=True, compare=False)
    # The read-through of a partial copy of ``out`` (an isolated worker's: ``storage/output.py``):
    # brings named files (relative to ``out``) from the bucket; the stage store, its key frames
    # and the LLM request cache call it on a local miss. None: ``out`` holds all there is.
    fetch: Callable[[list[str]], object] | None = field(default=None, compare=False)

    @property
    def build_id(self) -> str:
        """Hash of what decides the rows: derived, never a clock, so a resumed build writes
        the same rows as an uninterrupted one; pacing knobs are left out."""
        settings = self.config.model_dump(mode="json", exclude=BUILD_ID_EXCLUDES)
        drop_defaults(settings)
        salt = f":{self.salt}" if self.salt else ""
        return sha256_bytes(f"{digest(settings)}:{__version__}{salt}".encode())[:12]


@dataclass(frozen=True)
class ResolvedBuild:
    """What every shard of a job shares, resolved once per build (``resolve``) and carried to
    the shard tasks and to ``finalize``: the detector's identity (its weights hashed once), the
    annotator's prompts (read once), the stage fingerprints, and this run's LLM budget ledger.
    Plain data, so it pickles to Dask workers with the job."""

    #: The manifest's ``detector``: name, weights (as configured), weights_hash.
    detector: dict[str, str]
    prompts: AnnotatorPrompts
    #: What decides each stored stage's results (``stages.py``), by stage.
    fingerprints: dict[Stage, Any]
    #: A file in the dataset folder, or an object in the bucket (a URL) when the job's
    #: processes share nothing else (``BuildJob.moved``).
    budget_ledger: Path | str

    @property
    def detect_print(self) -> list:
        """Everything of the configuration that decides a frame's boxes (the detect fingerprint's head)."""
        return self.fingerprints[Stage.DETECT][:3]


def resolve(ctx: BuildContext, resources: Resources | None = None) -> ResolvedBuild:
    """Resolve a build's shared parts once, checking them before any work starts: the
    annotator's config and prompts first (cheap), then the detector, whose model is loaded into
    ``resources`` (the build's, when given: loaded once) and whose weights are hashed here only."""
    config = ctx.config
    prompts = resolve_prompts(config.annotator, config.resolved_span_check())
    detector = make_detector(config.detector, ctx.config_dir, resources)
    identity = {"name": detector.name, "weights": config.detector.weights, "weights_hash": detector.weights_hash}
    return ResolvedBuild(
        detector=identity,
        prompts=prompts,
        fingerprints=stage_fingerprints(config, identity, prompts.used),
        budget_ledger=budget_ledger(ctx.out, ctx.run),
    )


@runtime_checkable
class Job(Protocol):
    """What a runner runs: a plan, one task per shard, a finalize step."""

    #: The Prefect flow's name for this kind of job.
    flow_name: str

    @property
    def ctx(self) -> BuildContext: ...

    @property
    def resolved(self) -> ResolvedBuild: ...

    def claim(self) -> AbstractContextManager[Any]:
        """Hold the job's output folder for the whole run (``ownership.py``)."""
        ...

    def plan(self) -> BuildPlan: ...

    def run_shard(self, shard: ShardPlan, resources: Resources) -> ShardResult: ...

    def finalize(self, plan: BuildPlan, results: list[ShardResult], resources: Resources) -> Manifest: ...


#: Runs a job's plan, shards and finalize somewhere: ``in_process``, or the Prefect flow
#: (``flows.build.flow_runner``).
Runner = Callable[[Job, Resources], Manifest]


def in_process(job: Job, resources: Resources) -> Manifest:
    """Runner: the whole job in this process, shard after shard (no orchestrator)."""
    plan = job.plan()
    return job.finalize(plan, [job.run_shard(shard, resources) for shard in plan.shards], resources)


def run(job: Job, runner: Runner = in_process, resources: Resources | None = None) -> Manifest:
    """The one entry of a build or a re-annotation: ``job`` on ``runner``, holding its output
    folder for the whole run. ``resources``: the ones the job was resolved with (its detector
    loaded there), else new ones."""
    with job.claim():
        return runner(job, resources if resources is not None else Resources())


def finish(
    ctx: BuildContext,
    resolved: ResolvedBuild,
    results: list[ShardResult],
    *,
    prompts: list[PromptRef],
    detector: dict,
    config_dir: str | None,
    ingest: StepStats | None = None,
    **lineage: Any,
) -> Manifest:
    """Once every shard is done, for either job: the manifest (``lineage``: a re-annotation's
    ``parent`` and ``reannotation``), the dataset card, and this run's budget ledger removed."""
    manifest = write_manifest(
        ctx.out,
        build_id=ctx.build_id,
        code_version=__version__,
        config=ctx.config.model_dump(mode="json"),
        prompts=prompts,
        detector=detector,
        results=results,
        ingest=ingest,
        config_dir=config_dir,
        **lineage,
    )
    write_card(ctx.out, manifest)
    discard(resolved.budget_ledger)
    return manifest


@dataclass
class Carried:
    """A parent version's rows of one shard, kept unless their sample is done again.

    ``sample_ids`` are all the shard's ids (the parent's record); ``replaces`` maps a row id to
    the build id of the row a new one replaces (lineage in ``provenance.replaces``).
    """

    sample_ids: list[str]
    cot: list[CotRow]
    rl: list[RlRow]
    rejects: list[Reject]

    @property
    def replaces(self) -> dict[str, str]:
        return {row.id: row.provenance.build_id for row in [*self.cot, *self.rl]}


def _unfinished(shard: ShardPlan, sample_ids: list[str], steps: list[Step], pending: dict[str, int]) -> ShardResult:
    """A shard that wrote nothing and waits for the next run, with why (``pending``)."""
    return ShardResult(
        shard=shard.shard,
        sample_ids=sample_ids,
        files=[],
        stats=[step.stats for step in steps],
        complete=False,
        pending=pending,
        llm=llm_usage(steps),
    )


def execute_shard(
    ctx: BuildContext,
    resolved: ResolvedBuild,
    shard: ShardPlan,
    resources: Resources,
    carried: Carried | None = None,
) -> ShardResult:
    """Run the shard's samples through every per-sample stage and write its files; a shard
    already finished by this build for the same inputs (samples and media content) is returned
    as it is. With ``carried``, the parent's rows of the samples not in ``shard.samples`` are
    kept unchanged.

    A shard the steps deferred (``Deferred``: the run's LLM budget is spent, batches are
    submitted) writes nothing; nor does one with a sample a transient failure left pending
    (``RejectCode.PENDING``: 429, 5xx, timeout, transport, a broken reply). It returns
    unfinished, with the reasons, and the next run finishes it from the stage store and the
    request cache."""
    sample_ids = carried.sample_ids if carried is not None else shard.item_ids
    inputs = shard_inputs(shard, resources)
    done = finished_shard(ctx.out, shard.shard, sample_ids, ctx.build_id, inputs)
    if done is not None:
        return done
    steps = shard_steps(ctx, resolved, resources)
    items = run_steps((SampleWork(sample=sample) for sample in shard.samples), steps) if shard.samples else []
    if isinstance(items, Deferred):
        return _unfinished(shard, sample_ids, steps, {items.reason: len(shard.samples)})
    pending = [item for item in items if isinstance(item, Reject) and item.code is RejectCode.PENDING]
    if pending:
        reasons = Counter(item.message.split(":", 1)[0] for item in pending)
        return _unfinished(shard, sample_ids, steps, dict(sorted(reasons.items())))
    cot, rl, rejects = _rows(shard, items, carried)
    # A re-annotation shard none of whose samples is re-done reports no step counts.
    stats = [step.stats for step in steps] if carried is None or shard.samples else []
    return write_shard(
        ctx.out,
        shard.shard,
        cot_rows=cot,
        rl_rows=rl,
        rejects=rejects,
        sample_ids=sample_ids,
        stats=stats,
        llm=llm_usage(steps),
        build_id=ctx.build_id,
        inputs=inputs,
    )


def shard_inputs(shard: ShardPlan, resources: Resources | None = None) -> str:
    """Digest of what the shard is made from: each sample's record (less its location) and its
    media's content fingerprint, the ingest rejects dealt into it, and the code that makes its
    rows (this module and all it imports: every stage, verify and the shard writer included),
    so a finished shard is written again after a code change; its stages are reused or re-run
    by their own keys (``stages.py``)."""
    samples = sorted((sample_inputs(sample, resources) for sample in shard.samples), key=lambda s: s[0]["id"])
    rejects = sorted(rows_adapter(Reject).dump_python(shard.rejects, mode="json"), key=lambda r: (r["id"], r["code"]))
    return digest([samples, rejects, code_digest(__name__)])


def _rows(shard: ShardPlan, items: list, carried: Carried | None) -> tuple[list, list, list]:
    """The shard's CoT rows, RL rows and rejects: the new ones, after the carried ones kept."""
    if carried is None:
        cot, rl, rejects, replaces = [], [], list(shard.rejects), {}
    else:
        redone = {sample.id for sample in shard.samples}
        replaces = carried.replaces
        cot = [row for row in carried.cot if row.id not in redone]
        rl = [row for row in carried.rl if row.id not in redone]
        rejects = [r for r in carried.rejects if r.id not in redone] + list(shard.rejects)
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        for row, bucket in ((item.cot_row, cot), (item.rl_row, rl)):
            if row is not None:
                if carried is not None:
                    row.provenance.replaces = replaces.get(row.id)
                bucket.append(row)
    return cot, rl, rejects


def llm_usage(steps: list[Step]) -> LlmUsage | None:
    """The shard's LLM requests and tokens (None when no step used an LLM)."""
    return LlmUsage.total([step.llm_usage for step in steps])


def span_probe_settings(config: BuildConfig) -> dict:
    """What of the span check decides which probe frames the sampler decodes."""
    return config.resolved_span_check().model_dump(
        mode="json", include={"mode", "step_s", "reach_s", "presence_pattern", "events"}
    )


def stage_fingerprints(config: BuildConfig, detector: dict[str, str], prompts: list[PromptRef]) -> dict[Stage, Any]:
    """What decides each stored stage's results: its config, and for detect the detector's
    identity (the batch size included: a frame's boxes depend on it, third decimal, never on
    the frames that share its batch), for annotate the prompts."""
    filters = {source.name: source.filters for source in config.sources}
    track_window = config.track.window if config.track.enabled else 0
    settings = config.detector.model_dump(mode="json")
    if settings["runtime"] == "torch":  # the runtime's default keeps the fingerprints it had
        del settings["runtime"]
    detect_print = [settings, detector["name"], detector["weights_hash"]]
    return {
        Stage.PROBE: {name: f.model_dump(mode="json") for name, f in filters.items()},
        Stage.SAMPLE: [config.sampler.model_dump(mode="json"), track_window, span_probe_settings(config)],
        # Which neighbour frames are detected follows the gate's config (staged), never the
        # annotator: a re-annotation reuses its parent's detections.
        Stage.DETECT: [*detect_print, config.track.model_dump(mode="json") if config.track.enabled else None],
        Stage.ANNOTATE: [
            config.annotator.model_dump(mode="json", exclude=PACING_SETTINGS["annotator"]),
            [p.model_dump(mode="json") for p in prompts],
            config.verify.model_dump(mode="json"),
            config.track.model_dump(mode="json"),
            config.span_check.model_dump(mode="json"),
            config.gold.model_dump(mode="json"),
        ],
    }


def shard_steps(ctx: BuildContext, resolved: ResolvedBuild, resources: Resources) -> list[Step]:
    """The per-sample steps of a shard, each expensive one wrapped in the stage store
    (``stgr_builder/stages.py``) so a resumed shard runs only the samples it lacks. The detector
    and annotator are made from what the build resolved: nothing is hashed or read again."""
    config = ctx.config
    identity = resolved.detector
    detector = make_detector(config.detector, ctx.config_dir, resources, known_hash=identity["weights_hash"])
    span_check = config.resolved_span_check()  # events: auto decided (judge or off)
    annotator = make_annotator(
        config.annotator,
        config.verify,
        root=ctx.out,
        prompts=resolved.prompts,
        resources=resources,
        run=ctx.run,
        budget_ledger=resolved.budget_ledger,
        wait=ctx.wait,
        span_check=span_check,
        span_frames=config.sampler.span_frames,
        fetch=ctx.fetch,
    )
    provenance = {
        "detector_name": identity["name"],
        "detector_weights_hash": identity["weights_hash"],
        "build_id": ctx.build_id,
    }
    filters = {source.name: source.filters for source in config.sources}
    track_window = config.track.window if config.track.enabled else 0
    media = MediaFiles.of(config.cache)  # media in a bucket: bounded local copies
    steps: list[Step] = [
        ProbeStep(filters, resources, media),
        SampleStep(
            config.sampler,
            FrameStore(ctx.out, config.sampler.jpeg_quality),
            resources,
            track_window=track_window,
            span_check=span_check,
            media=media,
        ),
        # Remembers each distinct frame's detections across this process's shards (a frame
        # path names its bytes; the key holds all that decides the boxes): detected once.
        DetectStep(
            detector,
            ctx.out,
            batch_size=config.detector.batch,
            memo_key=digest(resolved.detect_print),
            resources=resources,
            track=config.track if config.track.enabled else None,
            pad_to=config.detector.batch if config.detector.backend == "ultralytics" else None,
        ),
        SpanCheckStep(span_check, span_frames=config.sampler.span_frames),
        GoldCheckStep(config.gold, config.track),
        *([TrackGateStep(config.track)] if config.track.enabled else []),
        AnnotateStep(annotator),
        VerifyStep(config.verify, provenance),
    ]
    store = StageStore(ctx.out, ctx.stage_parents, fetch=ctx.fetch)
    return stored_steps(steps, store, resolved.fingerprints, root=ctx.out, resources=resources)
