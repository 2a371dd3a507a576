"""annotate: key frames, evidence and a reasoning trace per sample (offline templates or an LLM)."""

from collections.abc import Callable
from pathlib import Path

from stgr_builder.annotate.base import AnnotateStep, Annotator, BatchAnnotator
from stgr_builder.annotate.batch import BatchPending, batch_progress, pending_batches
from stgr_builder.annotate.prompts import AnnotatorPrompts, Prompt, available_prompts, load_prompt
from stgr_builder.annotate.template import TemplateAnnotator
from stgr_builder.core.resources import Resources
from stgr_builder.core.steps import Deferred
from stgr_builder.errors import StgrError
from stgr_builder.models import AnnotatorConfig, SpanCheckConfig, VerifyConfig

__all__ = [
    "AnnotateStep",
    "Annotator",
    "AnnotatorPrompts",
    "BatchAnnotator",
    "BatchPending",
    "Deferred",
    "Prompt",
    "TemplateAnnotator",
    "available_prompts",
    "batch_progress",
    "load_prompt",
    "make_annotator",
    "pending_batches",
    "resolve_prompts",
]


def resolve_prompts(config: AnnotatorConfig, span_check: SpanCheckConfig | None = None) -> AnnotatorPrompts:
    """Check an annotator config before any work starts (a prompt of the other backend, an LLM
    without a model or key: one line) and load its prompts, once per build; with a
    ``span_check`` (resolved: ``events`` decided) whose events go to the judge, its prompt too.

    >>> resolve_prompts(AnnotatorConfig()).main.name
    'template-cot'
    """
    assert config.prompt is not None  # AnnotatorConfig fills in the backend's default
    main = load_prompt(config.prompt)
    _check_prompt_kind(config, main)
    if config.backend == "template":
        return AnnotatorPrompts(main)
    if config.backend == "openai":
        from stgr_builder.annotate.events import PROMPT as EVENT_PROMPT
        from stgr_builder.annotate.llm import check_llm_config

        check_llm_config(config)
        judge = load_prompt(config.judge.prompt) if config.judge_on else None
        events = load_prompt(EVENT_PROMPT) if span_check is not None and span_check.events == "judge" else None
        return AnnotatorPrompts(main, judge, events)
    raise StgrError(f"annotator backend {config.backend!r} is not available in this version")


def make_annotator(
    config: AnnotatorConfig,
    verify: VerifyConfig,
    *,
    root: Path,
    prompts: AnnotatorPrompts | None = None,
    resources: Resources | None = None,
    run: str = "",
    budget_ledger: Path | str | None = None,
    wait: bool = True,
    span_check: SpanCheckConfig | None = None,
    span_frames: int = 4,
    fetch: Callable[[list[str]], object] | None = None,
) -> Annotator:
    """The annotator a config names, with the ``prompts`` the build resolved (loaded here when
    not given). The openai backend (``annotate/llm.py``) keeps its request cache under ``root``
    (the dataset folder), and takes the budget of ``run`` (counted in ``budget_ledger``, the
    build's ``ResolvedBuild.budget_ledger``) and its frame memos from ``resources`` (the
    worker's), so the annotators of one run share them. With ``span_check.events: judge``
    it asks the judge about event spans first (``events.py``). ``fetch``: the read-through of a
    partial copy of ``root`` (``executor.BuildContext.fetch``), asked for a reply the cache lacks.

    >>> make_annotator(AnnotatorConfig(), VerifyConfig(), root=Path("out")).prompt.name
    'template-cot'
    """
    prompts = prompts if prompts is not None else resolve_prompts(config, span_check)
    if config.backend == "template":
        # Choose only boxes that verify will accept, so no sample is lost to a box the
        # annotator could have skipped.
        return TemplateAnnotator(prompts.main, max_box_area=verify.max_box_area)
    from stgr_builder.annotate.llm import LlmAnnotator

    return LlmAnnotator(
        config,
        verify,
        root=root,
        prompts=prompts,
        resources=resources,
        run=run,
        budget_ledger=budget_ledger,
        wait=wait,
        span_check=span_check,
        span_frames=span_frames,
        fetch=fetch,
    )


#: The prompt kind each annotator backend reads.
_KINDS = {"template": "template", "openai": "llm"}


def _check_prompt_kind(config: AnnotatorConfig, prompt: Prompt) -> None:
    """A prompt written for the other backend is one line naming both, not a schema dump."""
    wanted = _KINDS.get(config.backend)
    kind = prompt.content.get("kind", "template")
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
