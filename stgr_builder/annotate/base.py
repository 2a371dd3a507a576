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

from stgr_builder.errors import SampleError
from stgr_builder.models import Annotation, PromptRef, Reject, SampleWork, Stage
from stgr_builder.steps import Step


@runtime_checkable
class Annotator(Protocol):
    """What every annotator provides.

    ``annotate`` raises ``SampleError`` (e.g. ``NO_EVIDENCE``, ``ANNOTATION_FAILED``) for a
    sample it cannot annotate; the step turns that into a reject.
    """

    name: str
    prompt: PromptRef

    def annotate(self, work: SampleWork) -> Annotation:
        ...


@runtime_checkable
class BatchAnnotator(Annotator, Protocol):
    """An annotator that annotates a batch at once (an LLM client with concurrent requests).

    ``annotate_batch`` returns, per sample in order, its ``Annotation`` or the ``SampleError``
    that rejects it: one failing request must not take the batch down.
    """

    batch_size: int

    def annotate_batch(self, batch: list[SampleWork]) -> list[Annotation | SampleError]:
        ...


class AnnotateStep(Step):
    """Set ``work.annotation`` for each sample, or reject it with the annotator's reason.

    The batch size is the annotator's ``batch_size`` (its concurrency) unless given.
    """

    stage = Stage.ANNOTATE

    def __init__(self, annotator: Annotator, batch_size: int | None = None):
        super().__init__()
        self.annotator = annotator
        self.batch_size = batch_size or getattr(annotator, "batch_size", 1)

    @property
    def llm_usage(self):
        """The annotator's LLM requests and tokens (``LlmUsage``), or None without an LLM."""
        return getattr(self.annotator, "usage", None)

    def usage_of(self, sample_id: str):
        """The LLM usage of one sample's requests (taken once), or None without an LLM."""
        per_sample = getattr(self.annotator, "sample_usage", None)
        return per_sample.pop(sample_id, None) if per_sample is not None else None

    def process(self, work: SampleWork) -> SampleWork:
        work.annotation = self.annotator.annotate(work)
        return work

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork | Reject]:
        if not isinstance(self.annotator, BatchAnnotator):
            return super().process_batch(batch)
        results = self.annotator.annotate_batch(batch)
        out: list[SampleWork | Reject] = []
        for work, result in zip(batch, results, strict=True):
            if isinstance(result, SampleError):
                out.append(work.reject(self.stage, result.code, result.message))
            else:
                work.annotation = result
                out.append(work)
        return out


def image_size(work: SampleWork) -> tuple[int, int] | None:
    """``(W, H)`` of a still-image sample's original image, else None.

    The probe's ``ImageInfo`` is the original; a decoded frame's size is the fallback.
    """
    if work.sample.image_path is None:
        return None
    if work.image is not None:
        return work.image.width, work.image.height
    if work.frames:
        return work.frames[0].width, work.frames[0].height
    return None
