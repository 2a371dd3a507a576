"""The LLM annotator: any OpenAI-compatible endpoint writes the reasoning, the detector's boxes
are the evidence.

For each sample the model sees the question, the gold answer, the source's span and caption,
the candidate frames (images, each labelled with its number and timestamp) and the detector's
candidate boxes, numbered, drawn on the frames and listed in text. It replies with a
``CotReply`` (JSON schema from the model): the key frames it chose, on each the chosen box ids
and object names, and its reasoning, which cites boxes as ``[B3]`` and the answer span as
``[SPAN]``. The trace is then written in the spec's grammar (``grammar.py``) from the chosen
detector boxes, so no coordinate is ever typed by the model.

Requests run on ``AsyncOpenAI`` with at most ``concurrency`` in flight per batch (one event loop
and client per process, kept between batches: ``session.py``); the client retries 429 (honouring
Retry-After), 5xx and timeouts,
and a 200 reply that cannot be read (cut short, not JSON, HTML, a dropped connection, a body
over ``MAX_REPLY_BYTES``) is retried the same way. A transient failure that outlasts the
retries leaves the sample *pending* (``RejectCode.PENDING``, never written, never cached): its
shard is not committed and the next run finishes it. A reply that is not valid JSON for the
schema, or that names an unknown frame or box, is asked again with the error
(``max_invalid_retries`` times), then the sample is rejected (``llm_invalid_reply``); a refusal
or a request the endpoint refuses (4xx) is ``llm_error``; a reply still too large after the
retries is ``llm_reply_too_large``. Never a crash.

A reply is read however the endpoint wraps its JSON; one cut short (``finish_reason`` other
than ``stop``) is asked again; an endpoint that refuses ``json_schema`` is served in the next
format once. The semantic checks (``reply.py``: the object named for a box, times in prose,
off-span key frames, the MCQ conclusion) re-ask with the error, then reject with their own
codes; the judge (``box_judge.py``, ``judge.py``, ``annotator.judge``) puts each chosen box's crop to an
independent model. See docs/annotation-checks.md.

Every reply and final error goes to the request cache (``cache.py``) before it is used, and the
run's budget (requests, tokens; one ledger per run under ``_cache/budget``, shared by every
process) is checked before any new request: when it is spent ``annotate_batch`` returns a
``Deferred`` value, the shard writes nothing and is finished by the next run.

Every request (each retry too) is paced by the build's rate limits (``ratelimit.py``: the
``rpm``/``tpm`` caps and the server's ``x-ratelimit`` headers, shared by all its processes); the
frames of a request are drawn in worker processes (``prepare.py``); with ``mode: batch`` the
first requests go through the Batch API (``batch_mode.py``, ``batch.py``) and this online path
finds them cached.

The work is split by job: what the model sees (``request.py``), reading and checking its reply
and writing the trace (``reply.py``), the HTTP wire and the outcome of each failure
(``client.py``); this module drives them per batch.

The endpoint and key come from ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``; the key is read by the
client and never stored, logged or hashed here.

>>> annotator = LlmAnnotator(AnnotatorConfig(backend="openai", model="gpt-4o-mini",
...                          prompt="stgr-cot-llm"), VerifyConfig(), root=Path("out"))  # doctest: +SKIP
>>> [annotation] = annotator.annotate_batch([work])                                      # doctest: +SKIP
>>> annotation.reasoning                                                                  # doctest: +SKIP
'The dog appears <obj>dog</obj><box>[0.1, 0.2, 0.4, 0.6]</box>at<t>3.0</t>s and ...'
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stgr_builder.annotate.batch import BatchPending
from stgr_builder.annotate.batch_mode import BatchMode
from stgr_builder.annotate.box_judge import BoxJudging, Judged
from stgr_builder.annotate.cache import ResponseCache
from stgr_builder.annotate.client import (
    REQUEST_FAILURES,
    Asker,
    async_client,
    sample_error,
)
from stgr_builder.annotate.endpoint import EndpointWatch
from stgr_builder.annotate.events import EventJudging
from stgr_builder.annotate.formats import FormatMemory
from stgr_builder.annotate.prepare import PreparePool, default_processes
from stgr_builder.annotate.prompts import AnnotatorPrompts, load_prompt
from stgr_builder.annotate.ratelimit import limiter_for
from stgr_builder.annotate.reply import (
    SCHEMA_NAME,
    Chosen,
    CotReply,
    ReplyChecks,
    evidence_of,
    parse_reply,
    render_trace,
)
from stgr_builder.annotate.request import (
    Candidate,
    FrameImages,
    SampleView,
    compose_request,
    frames_to_draw,
    json_body,
    parse_llm_prompt,
    sample_view,
)
from stgr_builder.annotate.session import LlmSession
from stgr_builder.annotate.usage import ANNOTATOR_USAGE, SAMPLE_USAGE
from stgr_builder.core import grammar
from stgr_builder.core.hashing import digest
from stgr_builder.core.layout import budget_ledger as run_ledger
from stgr_builder.core.resources import Resources
from stgr_builder.core.steps import Deferred
from stgr_builder.errors import BudgetReached, SampleError, StgrError
from stgr_builder.models import (
    Annotation,
    AnnotatorConfig,
    LlmUsage,
    RejectCode,
    SampleWork,
    SpanCheckConfig,
    VerifyConfig,
)


def check_llm_config(config: AnnotatorConfig) -> None:
    """What the ``openai`` backend needs before any request: a model, a key in the environment,
    and the ``openai`` client installed; one line naming what is missing."""
    if not config.model:
        raise StgrError("annotator.model is required for backend openai (e.g. model: gpt-4o-mini)")
    if not os.environ.get("OPENAI_API_KEY"):
        raise StgrError(
            "set OPENAI_API_KEY for the openai annotator (any value for a local server such as "
            "`stgr serve-llm`), and OPENAI_BASE_URL for an endpoint other than OpenAI's"
        )
    import openai  # noqa: F401 - fail here, with the config, when the client is missing


class LlmAnnotator:
    """The ``openai`` annotator backend (see the module's docstring).

    ``annotate_batch`` returns, per sample, its ``Annotation`` or the ``SampleError`` that
    rejects it; or a ``Deferred`` value when the run's budget stopped a request, or when the
    batches it submitted (``mode: batch``, ``--no-wait``) are not back yet.
    ``usage`` accumulates this instance's requests and tokens (one instance per shard task).
    """

    name = "openai"

    def __init__(
        self,
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
    ):
        check_llm_config(config)
        assert config.model is not None  # check_llm_config
        self.config = config
        self.model = config.model
        if prompts is None:  # the build hands in the prompts it resolved once
            assert config.prompt is not None, "AnnotatorConfig fills in the backend's default prompt"
            judge_loaded = load_prompt(config.judge.prompt) if config.judge_on else None
            prompts = AnnotatorPrompts(load_prompt(config.prompt), judge_loaded)
        self.content = parse_llm_prompt(prompts.main)
        self.prompt = prompts.main.ref
        self.prompts = [self.prompt]
        self.box_judge = None
        if config.judge_on:
            assert prompts.judge is not None  # resolve_prompts loads it when the judge is on
            self.box_judge = BoxJudging(config.judge, prompts.judge, Path(root))
            self.prompts.append(self.box_judge.prompt)
        self.max_area = verify.max_box_area
        self.root = Path(root)
        # Event spans put to the judge before the annotation request (``events.py``).
        self.events = None
        if span_check is not None and span_check.events == "judge":
            self.events = EventJudging(span_check, span_frames, self.root, config.image_max_side, prompts.events)
            self.prompts.append(self.events.prompt)
        resources = resources if resources is not None else Resources()
        # One budget per run, shared by every annotator (shard task) of the run in this process,
        # and, through the run's ledger, by every process of the run (Dask workers): the one the
        # build resolved (a URL when the workers share only the bucket), else the folder's.
        ledger = budget_ledger if budget_ledger is not None else (run_ledger(self.root, run) if run else None)
        self.budget = resources.budget(run, config.budget, config.budget_tokens, ledger)
        self.cache = ResponseCache(self.root, fetch)  # fetch: a partial copy's read-through
        # The response_format the endpoint accepts, remembered under the cache (a fallback is
        # paid once per endpoint); the semantic checks of each reply.
        self.formats = FormatMemory(self.root, os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")
        # The judge's endpoint and key: its own variables, else the annotator's (never stored).
        judge = config.judge
        self.judge_base_url = os.environ.get(judge.base_url_env) or os.environ.get("OPENAI_BASE_URL")
        self.judge_api_key = os.environ.get(judge.api_key_env) or os.environ.get("OPENAI_API_KEY")
        self.judge_model = judge.model or config.model
        self.judge_formats = FormatMemory(self.root, (self.judge_base_url or "https://api.openai.com/v1") + "#judge")
        self.judge_client = None  # made in the session's loop on first use when its endpoint differs
        self.checks = (
            ReplyChecks(aliases=config.checks.aliases, key_frame_tolerance=config.checks.key_frame_tolerance)
            if config.checks.enabled
            else None
        )
        # Many times the concurrency: a batch ends with a tail of slow replies while slots idle,
        # so fewer, larger batches (a default shard is one batch) keep the endpoint busy.
        self.batch_size = max(16 * config.concurrency, 128)
        self.usage = LlmUsage()
        # Usage per sample id, so a resumed build stores and counts each sample's replies once
        # (a batch's total cannot be split after the fact); taken by ``usage_of``.
        self.sample_usage: dict[str, LlmUsage] = {}
        self._sampling = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        processes = default_processes(config.prepare_processes)
        pool = (
            resources.model(("llm-prepare-pool", processes), lambda: PreparePool(processes)).model
            if processes
            else None
        )
        self.images = FrameImages(resources, pool)
        # Requests and tokens per minute, shared by the build's every request (a flock'd file).
        self.limiter = limiter_for(self.root, config.rpm, config.tpm)
        # One event loop and client for the build's annotators in this process, kept between
        # batches (``session.py``); the client reads OPENAI_BASE_URL and OPENAI_API_KEY when made.
        base_url, api_key = os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY")
        self.session = resources.model(
            (
                "llm-session",
                base_url,
                digest(api_key or ""),
                config.max_retries,
                config.timeout,
                config.max_tokens,
                str(self.root),
                config.rpm,
                config.tpm,
            ),
            lambda: LlmSession(functools.partial(async_client, config, self.limiter, base_url, api_key)),
        ).model
        # Batch mode: wait for the batches (False: ``--no-wait``, ``BatchPending`` once submitted).
        self.wait = wait
        self.batches = BatchMode(self)
        # Stops the build when the endpoint never answers (``endpoint.py``), per process and endpoint.
        self.endpoint = resources.model(
            ("llm-endpoint", base_url, config.dead_endpoint_s),
            lambda: EndpointWatch(base_url, config.dead_endpoint_s),
        ).model

    def take_usage(self, sample_id: str) -> LlmUsage | None:
        return self.sample_usage.pop(sample_id, None)

    # -- public -------------------------------------------------------------------------

    def annotate(self, work: SampleWork) -> Annotation:
        """One sample (the step calls ``annotate_batch``); a deferred one is an error here."""
        result = self.annotate_batch([work])
        if isinstance(result, Deferred):
            raise StgrError(result.message)
        if isinstance(result[0], SampleError):
            raise result[0]
        return result[0]

    def annotate_batch(self, batch: list[SampleWork]) -> list[Annotation | SampleError] | Deferred:
        if self.config.mode == "batch":
            try:
                self.batches.send(batch)  # replies into the cache; the online pass below reads them
                if self.box_judge is not None:
                    self.batches.judge(batch)
            except BatchPending as pending:
                # Submitted and recorded (``_cache/batches``); the next run collects them, and pays nothing twice.
                return Deferred("batch", str(pending))
        results = self.session.run(lambda client: self._batch(client, batch))
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, SampleError)]
        if any(isinstance(r, BudgetReached) for r in failures):
            # Not a reject: the replies already received are in the request cache, free the next time.
            return Deferred(
                "budget", f"LLM budget reached (requests {self.budget.requests}, tokens {self.budget.tokens})"
            )
        if failures:
            raise failures[0]
        return results

    # -- one batch, one sample ------------------------------------------------------------

    async def _batch(
        self, client, batch: list[SampleWork], deferred: dict[str, tuple[dict, int]] | None = None
    ) -> list:
        """Annotate the batch online; with ``deferred``, the judge's requests the cache lacks
        are recorded there instead of sent (batch mode's collecting pass)."""
        semaphore = asyncio.Semaphore(self.config.concurrency)
        # Samples under way (prepared, asking, or asked): enough that a freed request slot finds
        # the next sample's messages ready, few enough that preparing them (GIL-bound Python,
        # in threads) does not crowd the event loop that sends and receives the requests.
        under_way = asyncio.Semaphore(2 * self.config.concurrency + 8)

        async def one(ask: Asker, work: SampleWork) -> Annotation | SampleError:
            async with under_way:
                usage = LlmUsage()
                SAMPLE_USAGE.set(usage)  # this task's context: its judge requests share it
                ANNOTATOR_USAGE.set(self.usage)
                try:
                    return await self._one(ask, work)
                finally:
                    self.sample_usage[work.sample.id] = usage

        ask = Asker(client, semaphore, self)
        self.judge_ask = Asker(
            self._judge_client(client),
            semaphore,
            self,
            model_name=self.judge_model,
            formats=self.judge_formats,
            judge=True,
        )
        self.judge_ask.deferred = deferred
        return await self.endpoint.guard(asyncio.gather(*(one(ask, work) for work in batch), return_exceptions=True))

    async def _one(self, ask: Asker, work: SampleWork) -> Annotation | SampleError:
        if self.events is not None and self.events.wanted(work):
            try:  # before the annotation request: a span the judge contradicts costs none
                await self.events.check(self.judge_ask, work, self.content.reask)
            except SampleError as err:
                return err
            except REQUEST_FAILURES as err:
                return sample_error(err, "judge")
        view = sample_view(work, max_per_frame=self.config.max_candidates_per_frame, max_area=self.max_area)
        if work.sample.task in grammar.GROUNDED_TASKS and not view.candidates:
            listed = ", ".join(repr(n) for n in view.names) or "no named object"
            return SampleError(
                RejectCode.NO_EVIDENCE,
                f"no usable detector box on the {len(view.frames)} eligible frames to ground {listed}",
            )
        frames = frames_to_draw(view, self.root)
        drawn = await self.images.get_many_async(frames, self.config.image_max_side)
        messages, digests = compose_request(view, self.content, frames, drawn)
        try:
            reply, chosen = await ask.valid(
                messages,
                self.prompt.version,
                CotReply,
                SCHEMA_NAME,
                lambda text: parse_reply(text, view, self.checks),
                self.content.reask,
                digests,
            )
        except REQUEST_FAILURES as err:
            return sample_error(err)
        kept = chosen
        if self.box_judge is not None and chosen:
            try:
                judged = await self._judge(chosen, reply.reasoning)
            except REQUEST_FAILURES as err:
                return sample_error(err, "judge")
            kept = judged.kept
            work.box_votes = judged.box_votes
            work.votes = sum(votes for *_, votes in judged.box_votes)
            if not kept:
                names = sorted({c.name for c in chosen.values()})
                return SampleError(
                    RejectCode.CROPS_REJECTED,
                    f"the judge did not confirm any of the {len(chosen)} chosen boxes ({', '.join(names)})",
                )
            if judged.unconfirmed:
                claim, cid = judged.unconfirmed[0]
                return SampleError(
                    RejectCode.SENTENCE_REJECTED,
                    f"the judge did not confirm {claim!r} in the crop of B{cid} "
                    f"({len(judged.unconfirmed)} claims not confirmed)",
                )
        evidence = evidence_of(kept)
        key_frames = sorted(
            {c.cand.frame.idx: c.cand.frame for c in kept.values()}.values(), key=lambda f: (f.time, f.idx)
        )
        try:
            reasoning = render_trace(reply.reasoning, view, kept)
        except ValueError as err:  # a name the grammar cannot write
            return SampleError(RejectCode.LLM_INVALID_REPLY, f"cannot write the trace: {err}")
        return Annotation(
            key_frames=key_frames,
            evidence=evidence,
            reasoning=reasoning,
            answer=work.sample.answer,
            prompt=self.prompt,
            model=self.model,
        )

    def _judge_endpoint_differs(self) -> bool:
        return (self.judge_base_url, self.judge_api_key) != (
            os.environ.get("OPENAI_BASE_URL"),
            os.environ.get("OPENAI_API_KEY"),
        )

    def _judge_client(self, client: Any) -> Any:
        """The annotator's client when the judge shares its endpoint and key, else one of its own."""
        if not self._judge_endpoint_differs():
            return client
        if self.judge_client is None:
            self.judge_client = async_client(self.config, self.limiter, self.judge_base_url, self.judge_api_key)
        return self.judge_client

    async def _judge(self, chosen: dict[int, Chosen], reasoning: str) -> Judged:
        """The box judge's verdict on the chosen boxes (``box_judge.py``)."""
        assert self.box_judge is not None, "asked only with the judge on"
        return await self.box_judge.judge(self.judge_ask, chosen, reasoning, self.content.reask)


__all__ = [
    "BudgetReached",
    "Candidate",
    "CotReply",
    "FrameImages",
    "LlmAnnotator",
    "SampleView",
    "check_llm_config",
    "json_body",
    "parse_reply",
    "render_trace",
    "sample_view",
]
