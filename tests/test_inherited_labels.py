"""Inherited labels are checked, not trusted (issue 24): the demo generator's noise, the span
check, the gold-box confirmation, and what the audit and the plan say about them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stgr_builder.audit import connect
from stgr_builder.core import geometry, grammar
from stgr_builder.dryrun.demo import (
    CORRUPTIONS_FILE,
    DEMO_FILE,
    MEDIA_DIR,
    DemoNoise,
    demo_config,
    generate_demo,
    load_corruptions,
    load_truth,
    write_demo_config,
)
from stgr_builder.models import (
    BuildConfig,
    Detection,
    Frame,
    GoldConfig,
    Plan,
    Reject,
    RejectCode,
    SampleWork,
    SourceObject,
    SourceSample,
    SpanCheckConfig,
    Task,
    TrackConfig,
    Upstream,
    VideoInfo,
)
from stgr_builder.pipeline import load_config
from stgr_builder.planning import make_plan
from stgr_builder.recipes import resolve_config
from stgr_builder.testing.inherited_eval import build_noisy, score
from stgr_builder.verify.inherited import GoldCheckStep, SpanCheckStep


@pytest.fixture(scope="module")
def noisy_demo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("noisy")
    generate_demo(folder, seed=0, n_videos=6, n_images=3, noise=DemoNoise(span_share=0.4, box_share=0.3, seed=3))
    return folder


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / DEMO_FILE).read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_noise_corrupts_the_chosen_share_and_says_so(noisy_demo):
    report = load_corruptions(noisy_demo)
    records = _records(noisy_demo)
    n_spans = len(report.spans) + len(report.intact_spans)
    assert len(report.spans) == round(0.4 * n_spans) > 0
    for corruption in report.spans:
        record = records[corruption.id]
        assert record["span"] == corruption.corrupted != corruption.truth
        # The answer states the corrupted span, as a wrong source would.
        assert grammar.parse_answer(Task(record["task"]), record["answer"]).span == tuple(corruption.corrupted)
        moved = max(abs(a - b) for a, b in zip(corruption.truth, corruption.corrupted, strict=True))
        assert moved >= 1.0 - 1e-9, corruption
    n_boxes = len(report.boxes) + len(report.intact_boxes)
    assert len(report.boxes) == round(0.3 * n_boxes) > 0
    assert {b.kind for b in report.boxes} <= {"shift", "wrong_object"}
    for corruption in report.boxes:
        assert geometry.box_iou(corruption.truth, corruption.corrupted) < 0.5
        record = records[corruption.id]
        gold = [tb["box"] for obj in record["objects"] for tb in obj["boxes"] if tb["time"] == corruption.time]
        assert gold == [corruption.corrupted]


def test_noise_is_seeded_and_leaves_media_and_truth_alone(noisy_demo, tmp_path):
    generate_demo(tmp_path, seed=0, noise=DemoNoise(span_share=0.4, box_share=0.3, seed=3))
    assert (tmp_path / DEMO_FILE).read_bytes() == (noisy_demo / DEMO_FILE).read_bytes()
    assert (tmp_path / CORRUPTIONS_FILE).read_bytes() == (noisy_demo / CORRUPTIONS_FILE).read_bytes()
    assert load_truth(tmp_path) == load_truth(noisy_demo)
    generate_demo(tmp_path, seed=0, noise=DemoNoise(span_share=0.4, box_share=0.3, seed=4))
    assert (tmp_path / DEMO_FILE).read_bytes() != (noisy_demo / DEMO_FILE).read_bytes()


def test_default_demo_has_no_corruption_report(tmp_path):
    generate_demo(tmp_path, seed=0, noise=DemoNoise(span_share=0.5, seed=1))
    assert (tmp_path / CORRUPTIONS_FILE).exists()
    generate_demo(tmp_path, seed=0)
    assert not (tmp_path / CORRUPTIONS_FILE).exists()
    records = _records(tmp_path)
    assert all(isinstance(o, str) for r in records.values() for o in r["objects"])


# ---------------------------------------------------------------------------------------
# The span check's reading of the evidence (core/spans.py, verify/inherited.py)
# ---------------------------------------------------------------------------------------


def _presence_work(claimed: list[float], seen_between: list[tuple[float, float]], *, question=None) -> SampleWork:
    """A temporal sample of a 20 s, 10 fps video whose frames every 0.5 s show a dog inside
    ``seen_between`` (the detector's boxes, as the detect step leaves them)."""
    sample = SourceSample(
        id="s1",
        source="STR_test",
        source_id="v#0",
        task=Task.TEMPORAL,
        question=question or "When is the dog visible in the video?",
        answer=f"[{claimed[0]}, {claimed[1]}]",
        video_path="v.mp4",
        media_root="/m",
        span=claimed,
        objects=[SourceObject(name="dog")],
    )
    info = VideoInfo(path="v.mp4", duration=20.0, fps=10.0, n_frames=200, width=320, height=240, keyframes=[0])
    frames = [Frame(idx=i, time=i / 10, path=f"kfs/{i}.jpg", width=320, height=240) for i in range(0, 200, 5)]
    seen = [f for f in frames if any(a <= f.time <= b for a, b in seen_between)]
    detections = [Detection(frame_idx=f.idx, label="dog", score=0.9, box=[0.1, 0.1, 0.3, 0.3]) for f in seen]
    return SampleWork(sample=sample, video=info, span_frames=frames, span_detections=detections)


def _check(work: SampleWork, mode: str = "check"):
    [item] = SpanCheckStep(SpanCheckConfig(mode=mode))([work])
    return item


def test_a_span_the_detector_agrees_with_is_kept_as_gold():
    item = _check(_presence_work([5.0, 9.0], [(5.0, 9.0)]))
    assert isinstance(item, SampleWork)
    assert item.sample.span == [5.0, 9.0] and item.lineage.span_check == "ok" and item.lineage.span == "gold"


@pytest.mark.parametrize("claimed", [[7.5, 11.5], [3.0, 11.0], [6.0, 8.0]], ids=["shift", "stretch", "shrink"])
def test_a_wrong_span_is_rejected_in_check_mode_and_corrected_in_refine_mode(claimed):
    item = _check(_presence_work(claimed, [(5.0, 9.0)]))
    assert isinstance(item, Reject) and item.code is RejectCode.SPAN_IMPRECISE, item
    refined = _check(_presence_work(claimed, [(5.0, 9.0)]), mode="refine")
    assert isinstance(refined, SampleWork), refined
    assert max(abs(a - b) for a, b in zip(refined.sample.span, [5.0, 9.0], strict=True)) <= 0.5
    assert grammar.parse_answer(Task.TEMPORAL, refined.sample.answer).span == tuple(refined.sample.span)
    assert refined.lineage.span == refined.lineage.answer == "refined"
    assert refined.lineage.original_span == claimed


def test_an_object_also_seen_elsewhere_makes_the_query_not_unique():
    item = _check(_presence_work([5.0, 9.0], [(5.0, 9.0), (13.0, 16.0)]), mode="refine")
    assert isinstance(item, Reject) and item.code is RejectCode.QUERY_NOT_UNIQUE


def test_one_missed_or_false_sighting_does_not_move_the_span():
    work = _presence_work([5.0, 9.0], [(5.0, 6.9), (7.1, 9.0), (14.0, 14.0)])  # a miss at 7.0, a false dog at 14.0
    assert _check(work).lineage.span_check == "ok"


def test_event_spans_are_unchecked_unless_judged_and_only_the_openai_backend_has_a_judge():
    event = "When does the dog jump over the fence?"
    item = _check(_presence_work([7.5, 11.5], [(5.0, 9.0)], question=event))
    assert isinstance(item, SampleWork) and item.lineage.span_check == "unchecked"
    # events: judge: the span check leaves the span to the annotate stage's judge (annotate/events.py)
    [item] = SpanCheckStep(SpanCheckConfig(events="judge"))([_presence_work([7.5, 11.5], [], question=event)])
    assert isinstance(item, SampleWork) and item.lineage is None
    config = demo_config().model_dump(mode="json")
    config["span_check"] = {"events": "judge"}
    with pytest.raises(ValueError, match="events: judge"):
        BuildConfig.model_validate(config)  # the template backend has no model to ask
    config["span_check"] = {}
    assert BuildConfig.model_validate(config).resolved_span_check().events == "off"
    config["annotator"].update({"backend": "openai", "model": "m", "prompt": "stgr-cot-llm"})
    assert BuildConfig.model_validate(config).resolved_span_check().events == "off"  # no judge configured
    config["annotator"]["judge"] = {"enabled": True}
    assert BuildConfig.model_validate(config).resolved_span_check().events == "judge"


def test_an_event_the_judge_also_sees_elsewhere_makes_the_query_not_unique():
    """The outcome rules are the presence check's (core/spans.settle_span), on the judge's verdicts."""
    happening = [(5.0, 9.0), (13.0, 16.0)]

    def judge(frame: Frame, event: str) -> bool:
        assert event == "the dog jump over the fence"  # the event, not the question, is asked about
        return any(a <= frame.time <= b for a, b in happening)

    work = _presence_work([5.0, 9.0], [], question="When does the dog jump over the fence?")
    [item] = SpanCheckStep(SpanCheckConfig(mode="refine"), judge=judge)([work])
    assert isinstance(item, Reject) and item.code is RejectCode.QUERY_NOT_UNIQUE
    happening = [(6.0, 10.0)]
    [item] = SpanCheckStep(SpanCheckConfig(mode="refine"), judge=judge)(
        [_presence_work([5.0, 9.0], [], question=work.sample.question)]
    )
    assert isinstance(item, SampleWork) and item.lineage.span_check == "refined"
    assert item.sample.span == pytest.approx([6.0, 10.0], abs=0.3) and item.lineage.original_span == [5.0, 9.0]


def test_never_seen_objects_leave_the_span_unverified():
    item = _check(_presence_work([5.0, 9.0], []))
    assert isinstance(item, SampleWork) and item.lineage.span_check == "unverified"


# ---------------------------------------------------------------------------------------
# End to end, seeded: corrupted demo sources through a real build (tests/inherited_eval.py)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["check", "refine"])
def test_corrupted_labels_never_reach_rows_uncorrected_worst_seed(tmp_path, mode):
    results = [
        score(build_noisy(tmp_path / f"seed{seed}", seed, mode=mode, videos=4, images=2).parent) for seed in (5, 6)
    ]
    worst = {key: min(r[key] for r in results) for key in results[0]}
    assert worst["spans"] > 0 and worst["boxes"] > 0
    assert worst["spans_caught"] >= 0.9, results
    assert worst["boxes_caught"] >= 0.9, results
    assert worst["intact_spans_kept"] >= 0.95, results
    assert worst["intact_boxes_kept"] >= 0.95, results


@pytest.mark.slow
def test_corrupted_event_spans_are_caught_by_the_judge_before_annotation(tmp_path):
    """The demo's event questions, a third of them corrupted, built with the openai backend
    against the dry-run server (its judge answers from the frames' pixels), events: judge."""
    folder = tmp_path / "events"
    figures = score(build_noisy(folder, 3, mode="check", videos=3, images=0, events=True).parent)
    assert figures["event_spans"] > 0 and figures["intact_event_spans"] > 0, figures
    assert figures["event_spans_caught"] >= 0.9 and figures["intact_event_spans_kept"] >= 0.95, figures
    with connect(folder / "out") as con:
        rejected = con.sql("SELECT id FROM rejects WHERE code = 'span_imprecise'").fetchall()
        lineage = con.sql("SELECT provenance.lineage.span_check FROM rl WHERE question LIKE 'When does%'").fetchall()
    assert rejected and {value for (value,) in lineage} == {"ok"}
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    # The judge is asked first: a sample it rejects makes no annotation request.
    llm = manifest["llm"]
    assert llm["checks"]["event_judge.no"] > 0 and llm["checks"]["event_judge.yes"] > 0, llm
    assert llm["requests"] - llm["judge_requests"] <= manifest["counts"]["samples"] - len(rejected), llm


@pytest.mark.slow
def test_without_the_checks_corrupted_labels_become_rows(tmp_path):
    figures = score(build_noisy(tmp_path / "off", 5, mode="off", videos=4, images=2).parent)
    assert figures["spans_caught"] < 0.5 and figures["boxes_caught"] < 0.5, figures


# ---------------------------------------------------------------------------------------
# Gold boxes confirmed before they become reward targets (verify/inherited.py GoldCheckStep)
# ---------------------------------------------------------------------------------------

_DOG = [0.40, 0.40, 0.60, 0.60]


def _gold_work(gold_box: list[float]) -> SampleWork:
    """A spatio-temporal sample whose source gives a gold dog box on frame 10; the detector
    sees the dog at ``_DOG`` on frame 10 and its four neighbours."""
    sample = SourceSample(
        id="g1",
        source="STR_test",
        source_id="v#1",
        task=Task.SPATIO_TEMPORAL,
        question="What does the dog do?",
        answer="It runs.",
        video_path="v.mp4",
        media_root="/m",
        span=[0.0, 2.0],
        objects=[SourceObject(name="dog", boxes=[{"time": 1.0, "box": gold_box}])],
        gold_evidence=True,
    )
    frame = lambda i: Frame(idx=i, time=i / 10, path=f"kfs/{i}.jpg", width=320, height=240)  # noqa: E731
    dog = lambda i: Detection(frame_idx=i, label="dog", score=0.9, box=list(_DOG))  # noqa: E731
    return SampleWork(
        sample=sample,
        frames=[frame(10)],
        track_frames=[frame(i) for i in (8, 9, 11, 12)],
        detections=[dog(10), Detection(frame_idx=10, label="dog", score=1.0, box=gold_box, gold=True)],
        track_detections=[dog(i) for i in (8, 9, 11, 12)],
    )


def _gold_check(work: SampleWork, **config):
    [item] = GoldCheckStep(GoldConfig(**config), TrackConfig())([work])
    return item


def test_a_gold_box_the_detector_agrees_with_stays_gold():
    item = _gold_check(_gold_work([0.41, 0.40, 0.61, 0.60]))
    assert isinstance(item, SampleWork)
    assert [d.box for d in item.detections if d.gold] == [[0.41, 0.40, 0.61, 0.60]]
    assert item.lineage.gold_confirmed == 1 and not item.refined_boxes


def test_a_gold_box_off_its_object_is_replaced_by_the_tracked_box():
    off = [0.48, 0.40, 0.68, 0.60]  # IoU 0.43 with the dog the detector tracks
    item = _gold_check(_gold_work(off))
    assert isinstance(item, SampleWork)
    assert [d.box for d in item.detections if d.gold] == [_DOG]
    assert item.lineage.gold_replaced == 1 and [d.box for d in item.refined_boxes] == [_DOG]


def test_a_gold_box_on_nothing_rejects_the_sample_unless_kept_on_purpose():
    wrong = [0.05, 0.05, 0.25, 0.25]  # where the detector sees no dog
    item = _gold_check(_gold_work(wrong))
    assert isinstance(item, Reject) and item.code is RejectCode.GOLD_UNCONFIRMED
    kept = _gold_check(_gold_work(wrong), keep_unconfirmed=True)
    assert isinstance(kept, SampleWork) and [d.box for d in kept.detections if d.gold] == [wrong]
    assert kept.lineage.gold_unconfirmed == 1


# ---------------------------------------------------------------------------------------
# The media resolution report of `stgr plan` (planning.media_report)
# ---------------------------------------------------------------------------------------


def test_the_plan_names_every_missing_files_upstream_and_where_to_get_it(tmp_path):
    config_path = write_demo_config(tmp_path / "CONFIG.yaml")
    media = tmp_path / MEDIA_DIR
    gone = ["videos/v001.mp4", "videos/v004.mp4", "images/i002.jpg"]
    for rel in gone:
        (media / rel).unlink()
    config = load_config(config_path)
    source = config.sources[0].model_copy(
        update={"upstreams": [Upstream(name="Demo videos", prefix="videos/", get="stgr demo --write-config")]}
    )
    plan = make_plan(config.model_copy(update={"sources": [source]}), tmp_path)
    [report] = plan.sources
    assert (report.media_referenced, report.media_resolved) == (9, 6)
    groups = {m.upstream: m for m in report.missing_media}
    assert set(groups) == {"Demo videos", "unknown (images/)"}
    assert groups["Demo videos"].files == 2 and groups["Demo videos"].get == "stgr demo --write-config"
    assert groups["Demo videos"].examples == ["videos/v001.mp4", "videos/v004.mp4"]
    assert groups["unknown (images/)"].examples == ["images/i002.jpg"] and groups["unknown (images/)"].get is None
    # Machine-readable: the plan's JSON carries the same report.
    again = Plan.model_validate_json(plan.model_dump_json())
    assert again.sources[0].missing_media == report.missing_media


def test_the_plan_counts_the_event_judges_requests_before_any_spend(tmp_path):
    config_path = write_demo_config(tmp_path / "CONFIG.yaml", event_spans=True)
    config = load_config(config_path)
    annotator = config.annotator.model_copy(update={"backend": "openai", "model": "m", "prompt": "stgr-cot-llm"})
    events = [
        s for s in map(json.loads, (tmp_path / DEMO_FILE).read_text().splitlines()) if "When does" in s["question"]
    ]
    off = make_plan(config.model_copy(update={"annotator": annotator}), tmp_path).estimate
    judged = config.model_copy(
        update={"annotator": annotator, "span_check": config.span_check.model_copy(update={"events": "judge"})}
    )
    on = make_plan(judged, tmp_path).estimate
    assert events and off.event_judge_requests == 0
    # One request per probe (at most 38 around a span's two ends) and candidate frame of each event span.
    assert 20 * len(events) <= on.event_judge_requests <= (38 + 8) * len(events)
    assert on.span_probe_frames > off.span_probe_frames  # the event spans' probes are decoded too
    assert on.prompt_tokens > off.prompt_tokens and on.images - off.images == on.event_judge_requests


def test_the_recipes_say_where_every_sources_media_come_from(tmp_path):
    for recipe in ("stgr-cot-30k", "stgr-rl-36k"):
        config, _, _ = resolve_config(recipe, data_root=tmp_path)
        assert all(source.upstreams and source.upstreams[0].get for source in config.sources), recipe
