"""The LLM annotator against the shipped server, through the real openai client over HTTP on
127.0.0.1: structured replies become grammar-exact traces from detector boxes; faults become
rejects with their reason after bounded retries; replies and errors are cached; the budget
stops new requests; the judge drops boxes it does not confirm on their pixels."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stgr_builder.annotate.cache import ResponseCache
from stgr_builder.annotate.llm import LlmAnnotator
from stgr_builder.core import grammar
from stgr_builder.core.steps import Deferred
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import SampleError
from stgr_builder.models import (
    AnnotatorConfig,
    Detection,
    Frame,
    RejectCode,
    SampleWork,
    SourceObject,
    SourceSample,
    Task,
    VerifyConfig,
    VideoInfo,
    sample_id,
)
from stgr_builder.verify import verify_work

from helpers.llm_units import BOXES, FRAMES  # the fixtures root and env: tests/conftest.py

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}


def work(n: int, names=("dog",), task=Task.SPATIO_TEMPORAL) -> SampleWork:
    question = f"What does the animal do in clip {n}?"
    sample = SourceSample(
        id=sample_id("STR_t", str(n), question),
        source="STR_t",
        source_id=str(n),
        task=task,
        question=question,
        answer="It walks." if task is Task.SPATIO_TEMPORAL else "[0.5, 2.5]",
        video_path="v.mp4",
        media_root=".",
        span=[0.5, 2.5] if task is Task.SPATIO_TEMPORAL else None,
        objects=[SourceObject(name=x) for x in names],
    )
    frames = [Frame(idx=idx, time=t, path=f"kfs/f{idx}.jpg", width=160, height=120) for idx, t in FRAMES]
    dets = [
        Detection(frame_idx=idx, label=name, score=0.5 + idx / 100, box=BOXES[name])
        for idx, _ in FRAMES
        for name in BOXES
    ]
    video = VideoInfo(path="v.mp4", duration=4.0, fps=10, n_frames=40, width=160, height=120, keyframes=[0])
    return SampleWork(sample=sample, video=video, frames=frames, detections=dets)


def annotator(root: Path, run: str = "r1", **options) -> LlmAnnotator:
    config = AnnotatorConfig(
        backend="openai",
        model="stgr-dry-run",
        prompt="stgr-cot-llm",
        **{"timeout": 5.0, "max_retries": 1, "max_invalid_retries": 1, **NO_JUDGE, **options},
    )
    return LlmAnnotator(config, VerifyConfig(), root=root, run=run)


def test_structured_replies_become_traces_from_the_chosen_detector_boxes(root, env):
    works = [work(0), work(1, task=Task.TEMPORAL)]
    with serve_llm() as server:
        env(server)
        llm = annotator(root)
        results = llm.annotate_batch(works)
        assert server.stats()["total"] == 2
    for item, annotation in zip(works, results, strict=True):
        assert not isinstance(annotation, SampleError), annotation
        item.annotation = annotation
        base = {"detector_name": "d", "detector_weights_hash": "h", "build_id": "b"}
        assert verify_work(item, VerifyConfig(), base) == []
        # Every box of the trace is a detector box of the named object, inside the span.
        mentions = grammar.parse_trace(annotation.reasoning).mentions
        assert mentions and all(m.name == "dog" and list(m.boxes[0]) == BOXES["dog"] for m in mentions)
        assert all(0.5 <= kf.time <= 2.5 for kf in annotation.key_frames)
    assert "<t>0.5</t>s to <t>2.5</t>s" in results[1].reasoning  # [SPAN] of the temporal task
    assert llm.usage.requests == 2 and llm.usage.images == 4 and llm.usage.prompt_tokens > 0


def test_rate_limits_are_retried_after_retry_after_then_left_pending_uncached(root, env):
    with serve_llm(fault_rate=1.0, faults=["429"], retry_after_s=0.2) as server:
        env(server)
        started = time.perf_counter()
        [result] = annotator(root, max_retries=2).annotate_batch([work(0)])
        elapsed = time.perf_counter() - started
        assert server.stats()["total"] == 3  # first try + 2 retries
        assert elapsed >= 0.4  # two waits of Retry-After
        assert isinstance(result, SampleError) and result.code is RejectCode.PENDING
        assert result.message.startswith("rate_limited: HTTP 429")
        # Not cached: a later run asks again (and a healthy server answers).
        assert not ResponseCache(root).keys()
    with serve_llm() as server:
        env(server)
        [again] = annotator(root, run="r2", max_retries=2).annotate_batch([work(0)])
        assert server.stats()["total"] == 1 and not isinstance(again, SampleError)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("500", "server_error"),
        ("truncated", "bad_reply"),
        ("dropped", "bad_reply"),
        ("html", "bad_reply"),
        ("hang", "timeout"),
    ],
)
def test_reply_faults_are_retried_then_left_pending(root, env, fault, reason):
    with serve_llm(fault_rate=1.0, faults=[fault], hang_s=1.0) as server:
        env(server)
        [result] = annotator(root, max_retries=1, timeout=0.3).annotate_batch([work(0)])
        assert server.stats()["total"] == 2  # the first try and one retry
    assert isinstance(result, SampleError) and result.code is RejectCode.PENDING
    assert result.message.startswith(f"{reason}: ")
    assert not ResponseCache(root).keys()


def test_a_reply_too_large_on_every_try_is_a_reject_and_never_cached(root, env):
    with serve_llm(fault_rate=1.0, faults=["huge"]) as server:
        env(server)
        [result] = annotator(root, max_retries=1).annotate_batch([work(0)])
        assert server.stats()["total"] == 2
    assert result.code is RejectCode.LLM_REPLY_TOO_LARGE and "over the bound" in result.message
    assert not ResponseCache(root).keys()


@pytest.mark.parametrize("fault", ["schema", "malformed"])
def test_invalid_replies_are_asked_again_a_bounded_number_of_times(root, env, fault):
    with serve_llm(fault_rate=1.0, faults=[fault]) as server:
        env(server)
        [result] = annotator(root, max_invalid_retries=2).annotate_batch([work(0)])
        assert server.stats()["total"] == 3
    assert isinstance(result, SampleError) and result.code is RejectCode.LLM_INVALID_REPLY
    assert "3 replies could not be used" in result.message


def test_a_hanging_server_is_a_timeout_not_a_hang(root, env):
    with serve_llm(fault_rate=1.0, faults=["timeout"], hang_s=10.0) as server:
        env(server)
        hanging = annotator(root, timeout=0.3, max_retries=0)
        started = time.perf_counter()
        [result] = hanging.annotate_batch([work(0)])
        assert time.perf_counter() - started < 5.0  # the hang's 10 s were not waited out (a loaded machine's slack)
    assert result.code is RejectCode.PENDING and result.message.startswith("timeout: no reply within 0.3s")


def test_the_budget_stops_new_requests_and_a_rerun_pays_only_for_the_rest(root, env):
    works = [work(n) for n in range(5)]
    with serve_llm() as server:
        env(server)
        # Not an error: a value that tells the shard to stop and wait for the next run.
        stopped = annotator(root, budget=2, concurrency=1).annotate_batch(works)
        assert isinstance(stopped, Deferred) and stopped.reason == "budget"
        assert stopped.message.startswith("LLM budget reached (requests 2, tokens ")
        assert server.stats()["total"] == 2
        rerun = annotator(root, run="r2")
        results = rerun.annotate_batch([work(n) for n in range(5)])
        assert server.stats()["total"] == 5
        assert rerun.usage.cached == 2 and rerun.usage.requests == 5
    assert not any(isinstance(r, SampleError) for r in results)
    assert len(ResponseCache(root).keys()) == 5


def _draw_dog(root: Path) -> None:
    """The frames with a demo-rendered dog in the dog's box and nothing in the cat's box, so the
    judge (the demo detector on the crop's pixels) can tell them apart."""
    from stgr_builder.dryrun.demo.sprites import make_sprites, paste

    sprite = make_sprites(np.random.default_rng(0), "dog", "orange", 60.0, n_poses=1)[0]
    for idx, _ in FRAMES:
        frame = np.full((240, 320, 3), 90.0, dtype=np.float32)
        x1, y1 = round(BOXES["dog"][0] * 320), round(BOXES["dog"][1] * 240)
        paste(frame, sprite, x1 + 10, y1 + 30)
        Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(root / "kfs" / f"f{idx}.jpg")


def test_the_judge_answers_from_pixels_and_drops_boxes_it_does_not_confirm(root, env):
    _draw_dog(root)
    with serve_llm() as server:
        env(server)
        both, cat_only = work(0, names=("dog", "cat")), work(1, names=("cat",))
        results = annotator(root, judge={"enabled": True}).annotate_batch([both, cat_only])
        by_schema = server.stats()["by_schema"]
    assert by_schema["crop_verdicts"] == 2  # one request per sample: its crops, each with its question
    kept = results[0]
    assert {ev.name for ev in kept.evidence} == {"dog"}  # the empty "cat" box is not confirmed
    assert "cat" not in {m.name for m in grammar.parse_trace(kept.reasoning).mentions}
    assert both.votes == len(kept.evidence)
    assert [votes for *_, votes in both.box_votes] == [1] * len(kept.evidence)
    assert results[1].code is RejectCode.CROPS_REJECTED


def test_per_sentence_judging_asks_each_claim_of_its_crop_in_the_same_request(root, env):
    """``judge.per_sentence``: each sentence citing a box is asked of that box's crop beside the
    box questions, in the sample's one judge request; the dry-run judge answers a claim from the
    crop's pixels, so a claim about an object the crop does not show is not confirmed."""
    from stgr_builder.annotate import crops
    from stgr_builder.dryrun.judge import DemoJudge, verdicts

    _draw_dog(root)
    with serve_llm() as server:
        env(server)
        sample = work(0, names=("dog",))
        [result] = annotator(root, judge={"enabled": True, "per_sentence": True}).annotate_batch([sample])
        stats = server.stats()
    assert not isinstance(result, SampleError) and {ev.name for ev in result.evidence} == {"dog"}
    assert stats["by_schema"]["crop_verdicts"] == 1
    assert sample.votes == len(result.evidence)
    jpeg = crops.crop_jpeg(root / "kfs" / "f0.jpg", BOXES["dog"])
    asked = [
        {"type": "text", "text": "Crop 1: Does this crop show: On frame 1 the dog is visible.? Answer yes or no."},
        {"type": "image_url", "image_url": {"url": crops.data_url(jpeg)}},
        {"type": "text", "text": "Crop 2: Does this crop show: On frame 1 the cat is visible.? Answer yes or no."},
        {"type": "image_url", "image_url": {"url": crops.data_url(jpeg)}},
    ]
    assert verdicts(DemoJudge(), [{"role": "user", "content": asked}], ()) == {"answers": ["yes", "no"]}


def test_a_sentence_whose_claim_its_crop_does_not_show_is_not_confirmed(root, env):
    """Per-sentence judging on a reply the oracle would not write: the box is a dog (confirmed),
    the sentence that cites it says a cat sleeps (not confirmed, so the sample is rejected
    ``sentence_rejected``)."""
    import json as json_

    from stgr_builder.annotate.llm import sample_view
    from stgr_builder.annotate.reply import parse_reply

    _draw_dog(root)
    with serve_llm() as server:
        env(server)
        ann = annotator(root, judge={"enabled": True, "per_sentence": True})
        ann.annotate_batch([])  # sets up the judge's asker in the session
        view = sample_view(work(0, names=("dog",)), max_per_frame=8, max_area=1.0)
        dog = next(c for c in view.candidates.values() if c.det.label == "dog" and c.frame_no == 1)
        reply = {
            "key_frames": [{"frame": 1, "boxes": [{"id": dog.id, "name": "dog"}]}],
            "reasoning": f"The dog is visible [B{dog.id}]. The cat sleeps [B{dog.id}].",
        }
        parsed, chosen = parse_reply(json_.dumps(reply), view)
        judged = ann.session.run(lambda client: ann._judge(chosen, parsed.reasoning))
    assert list(judged.kept) == [dog.id] and [votes for *_, votes in judged.box_votes] == [1]
    assert judged.unconfirmed == [("The cat sleeps.", dog.id)]


def test_the_judge_question_holds_the_object_and_nothing_else(root):
    from stgr_builder.annotate.judge import JudgeItem, judge_messages, parse_judge_prompt
    from stgr_builder.annotate.prompts import load_prompt

    items = [JudgeItem("Is this a dog? Answer yes or no.", b"jpeg1"), JudgeItem("Is this a cat?", b"jpeg2")]
    messages = judge_messages(parse_judge_prompt(load_prompt("judge")), items)
    texts = [part["text"] for part in messages[1]["content"] if part["type"] == "text"]
    assert texts == ["Crop 1: Is this a dog? Answer yes or no.", "Crop 2: Is this a cat?"]
    assert len(messages) == 2 and sum(part["type"] == "image_url" for part in messages[1]["content"]) == 2


def test_batches_and_annotators_of_a_build_reuse_one_client_and_its_connections(root, env):
    """The build's annotators in one process share one event loop and client (``Resources``):
    a later batch, or a later shard's annotator, sends on the connections already open, and the
    annotator can be driven from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    from stgr_builder.core.resources import Resources

    config = AnnotatorConfig(
        backend="openai",
        model="stgr-dry-run",
        prompt="stgr-cot-llm",
        judge={"enabled": False},
        concurrency=2,
        timeout=5.0,
        max_retries=1,
        max_invalid_retries=1,
    )
    resources = Resources()
    with serve_llm(latency_ms=50) as server:
        env(server)
        first = LlmAnnotator(config, VerifyConfig(), root=root, run="r1", resources=resources)
        assert all(not isinstance(r, Exception) for r in first.annotate_batch([work(n) for n in range(4)]))
        second = LlmAnnotator(config, VerifyConfig(), root=root, run="r1", resources=resources)
        with ThreadPoolExecutor(2) as threads:  # two shard tasks at once
            batches = list(
                threads.map(second.annotate_batch, [[work(n) for n in range(4, 8)], [work(n) for n in range(8, 12)]])
            )
        stats = server.stats()
    assert second.session is first.session
    assert all(not isinstance(r, SampleError) for batch in batches for r in batch)
    assert stats["total"] == 12
    # at most 2 in flight per batch, so at most 4 connections were ever needed; a client per
    # batch opened 2 for each of the 3 batches
    assert stats["connections"] <= 4
