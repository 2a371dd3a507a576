"""A shard that stops for now (the run's LLM budget, a pending batch) is a ``Deferred`` value
that travels down the steps: nothing after it runs, and ``run_steps`` returns it instead of
the items, with no exception anywhere."""

from __future__ import annotations

from stgr_builder.core.steps import Deferred, Step, run_steps
from stgr_builder.models import SampleWork, SourceSample, Stage, Task


def work(n: int) -> SampleWork:
    sample = SourceSample(
        id=f"s{n}",
        source="S",
        source_id=f"s{n}",
        task=Task.VISUAL,
        question="q",
        answer="a",
        image_path="i.jpg",
        media_root="/m",
    )
    return SampleWork(sample=sample)


class Seen(Step):
    """Records every sample it processes."""

    def __init__(self, stage: Stage, batch_size: int):
        self.stage = stage
        super().__init__()
        self.batch_size = batch_size
        self.seen: list[str] = []

    def process(self, work: SampleWork) -> SampleWork:
        self.seen.append(work.sample.id)
        return work


class Budget(Seen):
    """Annotates batches of two until its budget of ``allowed`` batches is spent."""

    def __init__(self, allowed: int):
        super().__init__(Stage.ANNOTATE, batch_size=2)
        self.allowed = allowed

    def process_batch(self, batch: list[SampleWork]) -> list | Deferred:
        if self.allowed == 0:
            return Deferred("budget", "LLM budget reached (requests 4, tokens 0)")
        self.allowed -= 1
        return super().process_batch(batch)


def test_a_deferred_batch_stops_every_step_and_is_returned():
    before, deferring, after = Seen(Stage.DETECT, 1), Budget(allowed=1), Seen(Stage.VERIFY, 3)
    outcome = run_steps([work(n) for n in range(6)], [before, deferring, after])
    assert outcome == Deferred("budget", "LLM budget reached (requests 4, tokens 0)")
    # The step before stopped once the deferral came back (s4, s5 never read); the step after
    # had two samples batched and never ran them: nothing of the shard is finished.
    assert before.seen == ["s0", "s1", "s2", "s3"]
    assert deferring.seen == ["s0", "s1"] and after.seen == []
    assert deferring.stats.seen == 2  # the deferred batch is not counted: the next run does it


def test_steps_without_a_deferral_return_every_item():
    outcome = run_steps([work(n) for n in range(3)], [Seen(Stage.DETECT, 2), Budget(allowed=5)])
    assert isinstance(outcome, list) and [w.sample.id for w in outcome] == ["s0", "s1", "s2"]
