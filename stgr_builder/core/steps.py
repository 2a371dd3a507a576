"""The step protocol: a pipeline is a list of small steps, each with one job.

A step takes an iterable of ``SampleWork | Reject`` and yields the same. Rejects pass through
untouched; each step counts what it saw, kept and rejected (by code) and its time, so a build
ends with a table of where samples went. Steps know nothing of Prefect.

A step that cannot go on for now, without anything being wrong (the run's LLM budget is spent,
a submitted batch has not come back), returns a ``Deferred`` value in place of its batch's
results: it travels down the steps, each passes it on and stops, and ``run_steps`` returns it
instead of the items. Exceptions are left for real errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stgr_builder.errors import SampleError
from stgr_builder.models import LlmUsage, Reject, SampleWork, Stage, StepStats

Item = SampleWork | Reject


@dataclass(frozen=True)
class Deferred:
    """Work stopped for now, not failed: the shard writes nothing, and the next run finishes it
    from the stage store and the LLM request cache.

    ``reason`` is the manifest's pending reason (``budget``: the run's LLM budget is spent;
    ``batch``: Batch API jobs submitted, their replies not back yet); ``message`` says it in words.

    >>> Deferred("budget", "LLM budget reached (requests 2, tokens 0)").reason
    'budget'
    """

    reason: str
    message: str = ""


#: What flows between steps: samples, rejects, and at most one ``Deferred``, last.
Stream = Item | Deferred


class Step:
    """Base class. Override ``process`` (one sample) or ``process_batch`` (many at once)."""

    stage: Stage
    batch_size: int = 1

    def __init__(self) -> None:
        self.stats = StepStats(step=self.stage.value)

    @property
    def llm_usage(self) -> LlmUsage | None:
        """The LLM requests and tokens this step used so far; None for a step without an LLM."""
        return None

    def usage_of(self, sample_id: str) -> LlmUsage | None:
        """The LLM usage of one sample's requests, taken once (the stage store keeps it with the
        sample's result); None for a step without an LLM."""
        return None

    def process(self, work: SampleWork) -> SampleWork:
        """Fill in this step's part of ``work``; raise ``SampleError`` to reject it."""
        raise NotImplementedError

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork | Reject] | Deferred:
        """Process several samples at once (e.g. one detector batch); default: one by one. A
        ``Deferred`` stops the shard for now (see the module's docstring)."""
        return [self._guarded(work) for work in batch]

    def _guarded(self, work: SampleWork) -> SampleWork | Reject:
        try:
            return self.process(work)
        except SampleError as err:
            return work.reject(self.stage, err.code, err.message)

    def __call__(self, items: Iterable[Stream]) -> Iterator[Stream]:
        batch: list[SampleWork] = []
        for item in items:
            if isinstance(item, Deferred):
                yield item  # the shard stops: the samples batched here wait for the next run
                return
            if isinstance(item, Reject):
                yield item
                continue
            batch.append(item)
            if len(batch) >= self.batch_size:
                results = self._run(batch)
                yield from results
                if results and isinstance(results[-1], Deferred):
                    return
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, batch: list[SampleWork]) -> list[Stream]:
        started = time.perf_counter()
        results = self.process_batch(batch)
        if isinstance(results, Deferred):
            return [results]  # nothing of the batch is counted: the next run does it
        self.stats.seconds += time.perf_counter() - started
        self.stats.seen += len(batch)
        for result in results:
            if isinstance(result, Reject):
                self.stats.rejected[result.code.value] = self.stats.rejected.get(result.code.value, 0) + 1
            else:
                self.stats.kept += 1
        return list(results)


def run_steps(items: Iterable[Item], steps: list[Step]) -> list[Item] | Deferred:
    """Chain the steps lazily and drain them: every item out, or the ``Deferred`` that stopped them."""
    stream: Iterable[Stream] = items
    for step in steps:
        stream = step(stream)
    drained: list[Item] = []
    for item in stream:
        if isinstance(item, Deferred):
            return item
        drained.append(item)
    return drained
