"""The event judge (annotate/events.py) in the LLM annotator, against the shipped server over
real HTTP on 127.0.0.1: it is asked about every probe and candidate frame before the annotation
request, through the annotator's budget and usage; the outcome rules are core/spans.py's."""

from __future__ import annotations

from stgr_builder.annotate.llm import LlmAnnotator
from stgr_builder.core.steps import Deferred
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.models import (
    AnnotatorConfig,
    Frame,
    SampleWork,
    SourceObject,
    SourceSample,
    SpanCheckConfig,
    Task,
    VerifyConfig,
    VideoInfo,
    sample_id,
)

from helpers.llm_units import FRAMES  # the fixtures root and env: tests/conftest.py


def event_work() -> SampleWork:
    """A temporal sample whose span is an event, with the four grey frames as probes and candidates."""
    question = 'When does "the dog jumps over the fence" happen in the video?'
    sample = SourceSample(
        id=sample_id("STR_t", "e", question),
        source="STR_t",
        source_id="e",
        task=Task.TEMPORAL,
        question=question,
        answer="[1.0, 2.0]",
        video_path="v.mp4",
        media_root=".",
        span=[1.0, 2.0],
        objects=[SourceObject(name="dog")],
    )
    frames = [Frame(idx=idx, time=t, path=f"kfs/f{idx}.jpg", width=160, height=120) for idx, t in FRAMES]
    video = VideoInfo(path="v.mp4", duration=4.0, fps=10, n_frames=40, width=160, height=120, keyframes=[0])
    return SampleWork(sample=sample, video=video, frames=frames[1:3], span_frames=frames)


def annotator(root, **options) -> LlmAnnotator:
    config = AnnotatorConfig(
        backend="openai",
        model="stgr-dry-run",
        prompt="stgr-cot-llm",
        **{"timeout": 5.0, "max_retries": 1, "concurrency": 1, **options},
    )
    return LlmAnnotator(config, VerifyConfig(), root=root, run="r1", span_check=SpanCheckConfig(events="judge"))


def test_the_judge_is_asked_about_each_frame_before_the_annotation_request(root, env):
    work = event_work()
    with serve_llm() as server:
        env(server)
        llm = annotator(root)
        [result] = llm.annotate_batch([work])
        total = server.stats()["total"]
    # Four frames put to the judge (no dog on the grey frames: "no" each), then one annotation.
    assert llm.usage.judge_requests == 4 and total == 5, (llm.usage, total)
    assert llm.usage.checks == {"event_judge.no": 4}
    assert work.lineage is not None and work.lineage.span_check == "unverified"  # the judge never saw it
    assert not isinstance(result, Exception)


def test_the_llm_budget_counts_the_event_judges_requests(root, env):
    with serve_llm() as server:
        env(server)
        stopped = annotator(root, budget=4).annotate_batch([event_work()])
        stats = server.stats()
    assert isinstance(stopped, Deferred) and stopped.reason == "budget"  # a value, not an exception
    # The four judge requests took the budget: the annotation request after them was refused.
    assert stats["total"] == 4 and dict(stats["by_schema"]) == {"event_verdict": 4}, stats
