"""annotate: key frames, evidence and a reasoning trace per sample (offline templates or an LLM)."""

from pathlib import Path

from stgr_builder.annotate.base import AnnotateStep, Annotator, BatchAnnotator
from stgr_builder.annotate.batch import BatchPending, batch_progress, pending_batches
from stgr_builder.annotate.prompts import Prompt, available_prompts, load_prompt
from stgr_builder.annotate.template import TemplateAnnotator
from stgr_builder.core.resources import Resources
from stgr_builder.errors import StgrError
from stgr_builder.models import AnnotatorConfig, SpanCheckConfig, VerifyConfig

__all__ = [
    "AnnotateStep",
    "Annotator",
    "BatchAnnotator",
    "BatchPending",
    "Prompt",
    "TemplateAnnotator",
    "available_prompts",
    "batch_progress",
    "load_prompt",
    "make_annotator",
    "pending_batches",
]


def make_annotator(
    config: AnnotatorConfig,
    verify: VerifyConfig,
    *,
    root: Path | None = None,
    resources: Resources | None = None,
    run: str = "",
    wait: bool = True,
    span_check: SpanCheckConfig | None = None,
    span_frames: int = 4,
) -> Annotator:
    """The annotator a config names. The openai backend (``annotate/llm.py``) keeps its request
    cache under ``root`` (the dataset folder), and takes the budget of ``run`` and its frame
    memos from ``resources`` (the worker's), so the annotators of one run share them. With
    ``span_check.events: judge`` it asks the judge about event spans first (``events.py``).

    >>> make_annotator(AnnotatorConfig(), VerifyConfig()).prompt.name
    'template-cot'
    """
    _check_prompt_kind(config)
    if config.backend == "template":
        assert config.prompt is not None  # AnnotatorConfig fills in the backend's default
        # Choose only boxes that verify will accept, so no sample is lost to a box the
        # annotator could have skipped.
        return TemplateAnnotator(config.prompt, max_box_area=verify.max_box_area)
    if config.backend == "openai":
        from stgr_builder.annotate.llm import LlmAnnotator

        return LlmAnnotator(
            config,
            verify,
            root=root,
            resources=resources,
            run=run,
            wait=wait,
            span_check=span_check,
            span_frames=span_frames,
        )
    raise StgrError(f"annotator backend {config.backend!r} is not available in this version")


#: The prompt kind each annotator backend reads.
_KINDS = {"template": "template", "openai": "llm"}


def _check_prompt_kind(config: AnnotatorConfig) -> None:
    """A prompt written for the other backend is one line naming both, not a schema dump."""
    wanted = _KINDS.get(config.backend)
    assert config.prompt is not None  # AnnotatorConfig fills in the backend's default
    kind = load_prompt(config.prompt).content.get("kind", "template")
    if wanted is not None and kind != wanted:
        fits = ", ".join(name for name in available_prompts() if _kind_of(name) == wanted) or "none shipped"
        raise StgrError(
            f"annotator.prompt {config.prompt!r} is a {kind!r} prompt, but annotator.backend "
            f"{config.backend!r} needs a {wanted!r} prompt ({fits}); change one of the two"
        )


def _kind_of(name: str) -> str | None:
    try:
        return load_prompt(name).content.get("kind", "template")
    except StgrError:
        return None
