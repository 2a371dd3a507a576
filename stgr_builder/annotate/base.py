"""The annotator interface and the annotate step.

An annotator turns a sample with its candidate frames and detections into an ``Annotation``
(key frames, evidence, trace, answer). The offline ``TemplateAnnotator`` does it one sample at a
time; an LLM annotator over an async OpenAI-compatible client also offers ``annotate_batch``,
which the step then calls so that one batch's requests run concurrently.

>>> step = AnnotateStep(TemplateAnnotator())  # doctest: +SKIP
>>> [work] = step([work])                      # doctest: +SKIP
>>> work.annotation.model                      # doctest: +SKIP
'template'
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from stgr_builder.core import grammar
from stgr_builder.core.steps import Deferred, Step
from stgr_builder.errors import SampleError
from stgr_builder.models import Annotation, LlmUsage, PromptRef, Reject, RejectCode, SampleWork, Stage, Task


@runtime_checkable
class Annotator(Protocol):
    """What every annotator provides.

    ``annotate`` raises ``SampleError`` (e.g. ``NO_EVIDENCE``, ``ANNOTATION_FAILED``) for a
    sample it cannot annotate; the step turns that into a reject.
    """

    name: str
    prompt: PromptRef
    #: Every prompt the annotator uses (the annotation prompt first; crop checks add theirs).
    prompts: list[PromptRef]
    #: Samples per ``annotate_batch`` call (1 for annotators without one).
    batch_size: int

    @property
    def usage(self) -> LlmUsage | None:
        """LLM requests and tokens so far (None without an LLM)."""
        ...

    def annotate(self, work: SampleWork) -> Annotation: ...

    def take_usage(self, sample_id: str) -> LlmUsage | None:
        """The LLM usage of one sample's requests, once (None without an LLM)."""
        ...


@runtime_checkable
class BatchAnnotator(Annotator, Protocol):
    """An annotator that annotates a batch at once (an LLM client with concurrent requests).

    ``annotate_batch`` returns, per sample in order, its ``Annotation`` or the ``SampleError``
    that rejects it: one failing request must not take the batch down. Or, for the whole batch,
    a ``Deferred`` (the run's budget is spent, batches are submitted): nothing failed, and the
    next run finishes it.
    """

    def annotate_batch(self, batch: list[SampleWork]) -> list[Annotation | SampleError] | Deferred: ...


class AnnotateStep(Step):
    """Set ``work.annotation`` for each sample, or reject it with the annotator's reason.

    The batch size is the annotator's ``batch_size`` (its concurrency) unless given.
    """

    stage = Stage.ANNOTATE

    def __init__(self, annotator: Annotator, batch_size: int | None = None):
        super().__init__()
        self.annotator = annotator
        self.batch_size = batch_size or annotator.batch_size

    @property
    def llm_usage(self) -> LlmUsage | None:
        return self.annotator.usage

    def usage_of(self, sample_id: str) -> LlmUsage | None:
        return self.annotator.take_usage(sample_id)

    def process(self, work: SampleWork) -> SampleWork:
        work.annotation = self.annotator.annotate(work)
        return work

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork | Reject] | Deferred:
        if not isinstance(self.annotator, BatchAnnotator):
            return super().process_batch(batch)
        results = self.annotator.annotate_batch(batch)
        if isinstance(results, Deferred):
            return results
        out: list[SampleWork | Reject] = []
        for work, result in zip(batch, results, strict=True):
            if isinstance(result, SampleError):
                out.append(work.reject(self.stage, result.code, result.message))
            else:
                work.annotation = result
                out.append(work)
        return out


# What both annotators read off a sample


def object_names(work: SampleWork) -> list[str]:
    """The sample's object names, cleaned for the trace, unique, in source order; a visual-QA
    sample without objects falls back to the name in its gold answer."""
    names = [o.name for o in work.sample.objects]
    if not names and work.sample.task is Task.VISUAL:
        try:
            names = [grammar.parse_answer(Task.VISUAL, work.sample.answer).name or ""]
        except grammar.TraceError:
            names = []
    out: list[str] = []
    for name in names:
        # Detector labels are the raw names: only names that survive cleaning can be matched.
        if name == grammar.clean_text(name) and name and name not in out:
            out.append(name)
    return out


def trace_span(work: SampleWork) -> tuple[float, float] | None:
    """The span the trace states: a temporal task's answer span, else the sample's span."""
    sample = work.sample
    if sample.image_path is not None:
        return None
    if sample.task in grammar.TEMPORAL_TASKS:
        try:
            return grammar.parse_answer(sample.task, sample.answer).span
        except grammar.TraceError as err:
            if sample.span is None:
                raise SampleError(RejectCode.ANSWER_FORM, f"gold answer: {err.message}") from err
    if sample.span is None:
        return None
    start, end = sample.span  # a Span holds exactly two numbers
    return start, end
