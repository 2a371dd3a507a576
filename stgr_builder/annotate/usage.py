"""Where the LLM annotator's requests and check events are counted: the sample's usage (its
row's share of the cost) and the annotator's, both set per sample task in its context."""

from __future__ import annotations

import contextvars

from stgr_builder.models import LlmUsage

#: The usage of the sample whose task is running (its judge requests share it).
SAMPLE_USAGE: contextvars.ContextVar[LlmUsage] = contextvars.ContextVar("stgr_sample_llm_usage")
#: The annotator's usage, for the same task.
ANNOTATOR_USAGE: contextvars.ContextVar[LlmUsage] = contextvars.ContextVar("stgr_annotator_llm_usage")


def count_event(event: str) -> None:
    """One more ``event`` of the annotation checks (``LlmUsage.checks``), where it is counted."""
    for usage in (ANNOTATOR_USAGE.get(None), SAMPLE_USAGE.get(None)):
        if usage is not None:
            usage.count(event)
