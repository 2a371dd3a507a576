"""The step protocol: a pipeline is a list of small steps, each with one job.

A step takes an iterable of ``SampleWork | Reject`` and yields the same. Rejects pass through
untouched; each step counts what it saw, kept and rejected (by code) and its time, so a build
ends with a table of where samples went. Steps know nothing of Prefect.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from stgr_builder.errors import SampleError
from stgr_builder.models import LlmUsage, Reject, SampleWork, Stage, StepStats

Item = SampleWork | Reject


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

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork | Reject]:
        """Process several samples at once (e.g. one detector batch); default: one by one."""
        return [self._guarded(work) for work in batch]

    def _guarded(self, work: SampleWork) -> SampleWork | Reject:
        try:
            return self.process(work)
        except SampleError as err:
            return work.reject(self.stage, err.code, err.message)

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        batch: list[SampleWork] = []
        for item in items:
            if isinstance(item, Reject):
                yield item
                continue
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, batch: list[SampleWork]) -> list[Item]:
        started = time.perf_counter()
        results = self.process_batch(batch)
        self.stats.seconds += time.perf_counter() - started
        self.stats.seen += len(batch)
        for result in results:
            if isinstance(result, Reject):
                self.stats.rejected[result.code.value] = self.stats.rejected.get(result.code.value, 0) + 1
            else:
                self.stats.kept += 1
        return results


def run_steps(items: Iterable[Item], steps: list[Step]) -> list[Item]:
    """Chain the steps lazily and drain them."""
    stream: Iterable[Item] = items
    for step in steps:
        stream = step(stream)
    return list(stream)
