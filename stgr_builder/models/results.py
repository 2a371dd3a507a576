"""Build results: step statistics, shard plans and results, the manifest and re-annotation records."""

from __future__ import annotations

from pydantic import Field

from stgr_builder.models._base import (
    Record,
)
from stgr_builder.models.records import (
    PromptRef,
    Reject,
    SourceSample,
)


class StepStats(Record):
    """Where samples went in one step of one shard."""

    step: str
    seen: int = 0
    kept: int = 0
    rejected: dict[str, int] = Field(default_factory=dict, description="reject code -> count")
    seconds: float = 0.0
    resumed: int = Field(0, description="of the samples seen, those whose result came from the stage store")

    def merge(self, other: StepStats) -> StepStats:
        rejected = dict(self.rejected)
        for code, count in other.rejected.items():
            rejected[code] = rejected.get(code, 0) + count
        return StepStats(
            step=self.step,
            seen=self.seen + other.seen,
            kept=self.kept + other.kept,
            rejected=rejected,
            seconds=self.seconds + other.seconds,
            resumed=self.resumed + other.resumed,
        )


class ShardPlan(Record):
    """The samples (and ingest rejects) one shard task owns; assignment hashes the id."""

    shard: int = Field(ge=0)
    samples: list[SourceSample]
    rejects: list[Reject] = Field(default_factory=list)

    @property
    def item_ids(self) -> list[str]:
        return sorted([s.id for s in self.samples] + [r.id for r in self.rejects])


class BuildPlan(Record):
    shards: list[ShardPlan]
    ingest: StepStats


class ShardFile(Record):
    path: str = Field(description="relative to the dataset root")
    rows: int
    sha256: str


class LlmUsage(Record):
    """LLM requests behind a shard (or a build): the replies its rows used and their cost.

    ``requests`` counts every reply used (fresh or from the request cache), so a finished
    build reports the same totals however often it was interrupted; ``cached`` says how many
    of them an earlier run had already paid for.
    """

    requests: int = 0
    cached: int = Field(0, description="of the requests, those answered from the request cache")
    failed: int = Field(0, description="requests that ended in an error after the client's retries")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = Field(0, description="images sent (frames and crops)")
    judge_requests: int = Field(0, description="of the requests, those of the judge (crops put to the judge model)")
    checks: dict[str, int] = Field(
        default_factory=dict,
        description="the annotation checks at work, by event: '<check>.caught' (replies it caught), "
        "'<check>.fixed' (re-asks that fixed them); 'judge.yes' / 'judge.no' (the judge's verdicts)",
    )

    def merge(self, other: LlmUsage | None) -> LlmUsage:
        if other is None:
            return self.model_copy(deep=True)
        return LlmUsage.total([self, other]) or LlmUsage()

    @classmethod
    def total(cls, usages: list[LlmUsage | None]) -> LlmUsage | None:
        """The sum of the usages that are not None; None when all are."""
        found = [usage for usage in usages if usage is not None]
        if not found:
            return None
        out = cls()
        for usage in found:
            out.add(usage)
        return out

    def add(self, other: LlmUsage) -> None:
        """Add ``other`` into this one, in place."""
        for name in type(self).model_fields:
            if name == "checks":
                for event, count in other.checks.items():
                    self.checks[event] = self.checks.get(event, 0) + count
                self.checks = dict(sorted(self.checks.items()))
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def count(self, event: str) -> None:
        """One more ``event`` of the annotation checks (``checks``)."""
        self.checks[event] = self.checks.get(event, 0) + 1


class ShardResult(Record):
    """What one finished shard task wrote; stored beside the shards so a resumed build
    can skip it. ``complete=False``: the LLM budget ran out, or a transient failure left samples
    pending (``pending``); nothing was written and the next run finishes it."""

    shard: int
    sample_ids: list[str]
    files: list[ShardFile]
    stats: list[StepStats]
    complete: bool = True
    pending: dict[str, int] = Field(
        default_factory=dict, description="unfinished shard: samples left for the next run, by reason"
    )
    llm: LlmUsage | None = Field(None, description="LLM requests of this shard (openai backend)")
    build_id: str | None = Field(None, description="the build that wrote the shard; another build rewrites it")
    inputs: str | None = Field(
        None,
        description="digest of the shard's samples and of their media's content fingerprints: changed "
        "annotations or media rewrite the shard",
    )


class Manifest(Record):
    build_id: str
    code_version: str
    config: dict
    config_hash: str
    prompts: list[PromptRef]
    detector: dict
    counts: dict[str, int] = Field(description="rows per dataset, and rejects")
    shards: list[ShardFile]
    stats: list[StepStats]
    complete: bool = Field(True, description="false while samples are left for the next run (LLM budget reached)")
    pending: int = Field(0, description="samples of unfinished shards, left for the next run")
    pending_reasons: dict[str, int] = Field(
        default_factory=dict,
        description="why: samples by reason (budget, rate_limited, server_error, timeout, "
        "connection, bad_reply); the other samples of those shards wait with them",
    )
    llm: LlmUsage | None = Field(None, description="LLM requests and tokens, summed over the shards")
    config_dir: str | None = Field(
        None,
        description="absolute folder the config's relative paths were resolved against (re-annotation "
        "reads the sources from there)",
    )
    parent: ParentRef | None = Field(None, description="the version this one was derived from (re-annotation)")
    reannotation: Reannotation | None = Field(None, description="what re-annotation made this version")


class ParentRef(Record):
    """The dataset version a re-annotated version was derived from."""

    path: str = Field(description="the parent's dataset folder (absolute)")
    build_id: str
    manifest_sha256: str = Field(description="sha256 of the parent's manifest.json when this version was made")


class Reannotation(Record):
    """How a version was made from its parent: which rows, with which prompt and model."""

    where: str = Field(description="the SQL predicate that selected the rows")
    prompt: PromptRef
    model: str
    selected: int = Field(description="samples (ids) selected and re-annotated: rows and rejected samples")
    rejects_selected: int = Field(0, description="of them, samples the parent had rejected (the rejects view)")


Manifest.model_rebuild()
