"""Batch mode of the LLM annotator (``annotator.mode: batch``): the requests a batch of samples
will make, sent first through the Batch API (``batch.py``), their replies put in the request
cache, so that the annotator's online pass that follows finds them cached and pays nothing twice.

The annotation requests go first (``BatchMode.send``), then, with the judge on, the judge's
(``BatchMode.judge``). The Batch API's records (submitted batches, their files) are ``batch.py``'s.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Protocol

from stgr_builder.annotate.batch import BatchJobs
from stgr_builder.annotate.cache import CacheEntry, ResponseCache, request_key
from stgr_builder.annotate.client import TRANSIENT_ERROR, BadReply, entry_of, final_status
from stgr_builder.annotate.events import EventJudging
from stgr_builder.annotate.formats import FormatMemory, refuses_format, request_body
from stgr_builder.annotate.reply import SCHEMA_NAME, CotReply, ReplyChecks, parse_reply, short_error
from stgr_builder.annotate.request import (
    FrameImages,
    LlmPromptContent,
    SampleView,
    build_request,
    count_images,
    sample_view,
    schema_hash,
)
from stgr_builder.annotate.session import LlmSession
from stgr_builder.core import grammar
from stgr_builder.models import AnnotatorConfig, LlmUsage, PromptRef, SampleWork

__all__ = ["MAX_JUDGE_ROUNDS", "BatchMode", "BatchOwner"]

#: Rounds of judge batches at most (each vote, each re-ask of an unusable verdict is a round).
MAX_JUDGE_ROUNDS = 12


class BatchOwner(Protocol):
    """What batch mode takes from its annotator (``llm.LlmAnnotator``)."""

    config: AnnotatorConfig
    model: str
    prompt: PromptRef
    content: LlmPromptContent
    root: Path
    max_area: float
    events: EventJudging | None
    images: FrameImages
    checks: ReplyChecks | None
    cache: ResponseCache
    budget: Any
    usage: LlmUsage
    formats: FormatMemory
    session: LlmSession
    wait: bool
    judge_model: str
    judge_base_url: str | None
    judge_api_key: str | None
    _sampling: dict[str, Any]

    async def _batch(
        self, client: Any, batch: list[SampleWork], deferred: dict[str, tuple[dict, int]] | None = None
    ) -> list: ...

    def _judge_endpoint_differs(self) -> bool: ...


def is_answered(cache: ResponseCache, key: str) -> bool:
    """Whether the cache holds the request's final outcome (a reply, or an error that asking
    again would not change): such a request is never submitted."""
    entry = cache.get(key)
    return entry is not None and not (entry.kind == "error" and TRANSIENT_ERROR.match(entry.error or ""))


class BatchMode:
    """Sends a batch's requests through the Batch API before the annotator's online pass."""

    def __init__(self, owner: BatchOwner):
        self.owner = owner

    def send(self, batch: list[SampleWork]) -> None:
        """Each sample's first request (``_one``'s, byte for byte) that the cache lacks, sent
        through the Batch API (``batch.py``); the replies go into the request cache. With
        ``batch_reask: batch``, a reply that cannot be used is asked again, with its error, in
        a follow-up round (up to ``max_invalid_retries``), the very messages the online re-ask
        would send, so the online pass that follows finds every reply cached."""
        owner = self.owner
        asking: list[tuple[SampleView, list[dict], dict[str, str]]] = []
        for work in batch:
            view = sample_view(work, max_per_frame=owner.config.max_candidates_per_frame, max_area=owner.max_area)
            if work.sample.task in grammar.GROUNDED_TASKS and not view.candidates:
                continue  # rejected without a request (no_evidence)
            if owner.events is not None and owner.events.wanted(work):
                continue  # the event judge goes first (online): its span may be rejected or refined
            messages, digests = build_request(
                view, owner.content, owner.root, owner.config.image_max_side, owner.images
            )
            asking.append((view, messages, digests))
        rounds = 1 + (owner.config.max_invalid_retries if owner.config.batch_reask == "batch" else 0)
        for number in range(rounds):
            keys = [
                request_key(
                    model=owner.model,
                    prompt_version=owner.prompt.version,
                    messages=messages,
                    schema_hash=schema_hash(CotReply),
                    sampling=owner._sampling,
                    digests=digests,
                )
                for _, messages, digests in asking
            ]
            self._round({key: messages for key, (_, messages, _) in zip(keys, asking, strict=False)})
            if number + 1 == rounds:
                break
            again = []
            for key, (view, messages, digests) in zip(keys, asking, strict=False):
                entry = owner.cache.get(key)
                if entry is None or entry.kind != "reply":
                    continue  # a failure: the online pass deals with it
                try:
                    parse_reply(entry.content or "", view, owner.checks)
                except ValueError as exc:
                    again.append(
                        (
                            view,
                            [
                                *messages,
                                {"role": "assistant", "content": entry.content or ""},
                                {"role": "user", "content": owner.content.reask.format(error=short_error(exc))},
                            ],
                            digests,
                        )
                    )
            if not again:
                break
            asking = again

    def judge(self, batch: list[SampleWork]) -> None:
        """The judge's requests sent through the Batch API: a pass over the batch (its annotation
        replies cached by now) collects the judge requests the cache lacks instead of sending
        them (``Asker.deferred``), they go out as batches, and again, while a pass finds new
        ones (a later vote, a re-ask of an unusable verdict). A request a batch could not answer
        (transient, a refused response format) is left to the online pass that follows. Usage
        is counted by that final pass alone."""
        owner = self.owner
        saved, tried = owner.usage.model_copy(deep=True), set[str]()
        try:
            for _ in range(MAX_JUDGE_ROUNDS):
                deferred: dict[str, tuple[dict, int]] = {}
                # On copies: the pass's outcomes (votes, a span the event judge refines) are not kept.
                copies = [work.model_copy(deep=True) for work in batch]
                owner.session.run(functools.partial(owner._batch, batch=copies, deferred=deferred))
                fresh = {key: found for key, found in deferred.items() if key not in tried}
                if not fresh:
                    return
                tried.update(fresh)
                self._send_bodies(
                    {key: body for key, (body, _) in fresh.items()},
                    {key: images for key, (_, images) in fresh.items()},
                    owner.judge_model,
                    self._judge_client if owner._judge_endpoint_differs() else None,
                )
        finally:
            for name in type(owner.usage).model_fields:
                setattr(owner.usage, name, getattr(saved, name))

    def _judge_client(self) -> Any:
        """A Batch API client of the judge's own endpoint and key (never stored)."""
        owner = self.owner
        from openai import OpenAI

        return OpenAI(base_url=owner.judge_base_url, api_key=owner.judge_api_key, max_retries=5, timeout=120.0)

    def _round(self, requests: dict[str, list[dict]]) -> None:
        """Send the requests (cache key -> messages) the cache lacks as batches; cache the replies."""
        owner = self.owner
        bodies: dict[str, dict] = {}
        images: dict[str, int] = {}
        for key, messages in requests.items():
            if is_answered(owner.cache, key):
                continue
            body = request_body(
                owner.model,
                messages,
                CotReply,
                SCHEMA_NAME,
                owner.config.temperature,
                owner.config.max_tokens,
                owner.formats.mode,
            )
            bodies[key], images[key] = body, count_images(messages)
        self._send_bodies(bodies, images, owner.model)

    def _send_bodies(
        self, bodies: dict[str, dict], images: dict[str, int], model_name: str, client_factory: Any = None
    ) -> None:
        """Send request bodies (cache key -> body) as batches; cache the replies."""
        owner = self.owner
        if not bodies:
            return
        jobs = BatchJobs(
            owner.root,
            max_requests=owner.config.batch_max_requests,
            max_bytes=owner.config.batch_max_bytes,
            poll_s=owner.config.batch_poll_s,
            client_factory=client_factory,
        )
        # The budget counts only requests submitted now (not those of batches already submitted);
        # one it refuses is asked online, where the budget stops the shard.
        answered = functools.partial(is_answered, owner.cache)
        for key, (status, reply) in jobs.run(
            bodies, wait=owner.wait, admit=owner.budget.acquire, answered=answered
        ).items():
            if key not in bodies:
                continue
            if status == 200:
                try:
                    entry = entry_of(json.dumps(reply).encode(), images[key], model_name)
                except BadReply:
                    continue  # asked again online
            elif final_status(status):
                message = (reply or {}).get("error", {}).get("message", "") if isinstance(reply, dict) else ""
                if refuses_format(status, str(message)):
                    continue  # asked online, where the endpoint's response format is found once
                entry = CacheEntry(
                    kind="error",
                    images=images[key],
                    model=model_name,
                    error=f"HTTP {status} (batch): {str(message)[:200]}",
                )
            else:
                continue  # transient (429, 5xx): asked again online
            owner.budget.add_tokens(entry.usage.prompt_tokens + entry.usage.completion_tokens)
            owner.cache.put(key, entry)
        jobs.collected(answered)
