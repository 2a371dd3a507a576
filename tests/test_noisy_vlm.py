"""An endpoint that behaves like a real VLM (``stgr serve-llm --policy noisy``), through the real
openai client over HTTP on 127.0.0.1: every reply shape is read, a reply cut by ``max_tokens``
is asked again with room, an endpoint that refuses ``json_schema`` is served in the next format
once, and each semantic slip is re-asked with its error, then rejected with its own code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stgr_builder.annotate.formats import FORMATS_DIR
from stgr_builder.annotate.jsontext import extract_json
from stgr_builder.annotate.llm import LlmAnnotator
from stgr_builder.annotate.reply import ReplyError, check_prose, detector_name, drop_uncited_prose
from stgr_builder.dryrun.noisy import MISTAKE_KINDS, options_from
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import SampleError
from stgr_builder.models import (
    DEFAULT_ALIASES,
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

from helpers.llm_units import BOXES, FRAMES  # the fixtures root and env: tests/conftest.py

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}


def work(n: int, task: Task = Task.SPATIO_TEMPORAL, span=(0.5, 2.5), apart: bool = False) -> SampleWork:
    """A sample of the dog; ``apart``: the cat only at t=1.0 and the dog only elsewhere (a cat box
    named "dog" then has no dog box beside it to be swapped for)."""
    question = f"What does the dog do in clip {n}?"
    answers = {
        Task.SPATIO_TEMPORAL: "It walks.",
        Task.VIDEO_MCQ: "B",
        Task.TEMPORAL: "[1.5, 2.5]",
    }
    sample = SourceSample(
        id=sample_id("STR_t", str(n), question),
        source="STR_t",
        source_id=str(n),
        task=task,
        question=question,
        answer=answers[task],
        options=["It sits.", "It walks.", "It sleeps."] if task is Task.VIDEO_MCQ else [],
        video_path="v.mp4",
        media_root=".",
        span=list(span) if span else None,
        objects=[SourceObject(name="dog")],
    )
    frames = [Frame(idx=idx, time=t, path=f"kfs/f{idx}.jpg", width=160, height=120) for idx, t in FRAMES]
    # The dog's best box is at t=2.0 (inside every span used here).
    dets = [
        Detection(frame_idx=idx, label=name, score=0.9 - abs(t - 2.0) / 10, box=BOXES[name])
        for idx, t in FRAMES
        for name in BOXES
        if not apart or (name == "cat") == (t == 1.0)
    ]
    video = VideoInfo(path="v.mp4", duration=4.0, fps=10, n_frames=40, width=160, height=120, keyframes=[0])
    return SampleWork(sample=sample, video=video, frames=frames, detections=dets)


def annotator(root: Path, **options) -> LlmAnnotator:
    config = AnnotatorConfig(
        backend="openai",
        model="stgr-dry-run",
        **{"timeout": 5.0, "max_retries": 1, "max_invalid_retries": 2, "concurrency": 1, **NO_JUDGE, **options},
    )
    return LlmAnnotator(config, VerifyConfig(), root=root, run="r1")


def noisy(kind: str | None, *, fix_rate: float = 1.0, refuse_json_schema: bool = False, rate: float = 1.0):
    """Server options: only ``kind`` at ``rate`` (the others never)."""
    rates = dict.fromkeys(MISTAKE_KINDS, 0.0)
    if kind is not None:
        rates[kind] = rate
    return {
        "policy": "noisy",
        "noisy": options_from(rates, fix_rate=fix_rate, refuse_json_schema=refuse_json_schema),
    }


# ---------------------------------------------------------------------------------------
# Reply shapes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": "yes"}',
        '\ufeff\n  {"answer": "yes"}  \n',
        '```json\n{"answer": "yes"}\n```',
        '```\n{"answer": "yes"}\n```',
        'Sure. Here is my verdict: {"answer": "yes"} (I looked closely.)',
        'Thinking... {not json} then the reply:\n```json\n{"answer": "yes"}\n```\nDone {.}',
    ],
)
def test_every_reply_shape_yields_its_json_object(text):
    assert json.loads(extract_json(text)) == {"answer": "yes"}


def test_fenced_or_prose_wrapped_replies_become_rows_with_one_request_each(root, env):
    works = [work(n) for n in range(4)]
    with serve_llm(**noisy("fence")) as server:
        env(server)
        results = annotator(root).annotate_batch(works)
        assert server.stats()["total"] == 4  # no re-ask for a formatting habit
    assert not any(isinstance(r, SampleError) for r in results), results


def test_a_reply_cut_by_max_tokens_is_asked_again_with_room_once(root, env):
    with serve_llm(**noisy("length")) as server:
        env(server)
        llm = annotator(root, max_tokens=1500)
        [result] = llm.annotate_batch([work(0)])
        assert server.stats()["total"] == 2
    assert not isinstance(result, SampleError), result
    assert llm.usage.checks["finish_length.caught"] == 1


def test_a_refused_json_schema_falls_back_once_per_endpoint_and_is_remembered(root, env):
    with serve_llm(**noisy(None, refuse_json_schema=True)) as server:
        env(server)
        first = annotator(root)
        results = first.annotate_batch([work(0), work(1)])
        assert server.stats()["by_outcome"]["format_refused"] == 1
        assert not any(isinstance(r, SampleError) for r in results), results
        assert first.usage.checks["format.fallback"] == 1 and first.usage.checks["format.json_object"] == 2
        # A later build (a new annotator, as a new process would make) reads the remembered mode.
        again = annotator(root).annotate_batch([work(2)])
        assert server.stats()["by_outcome"]["format_refused"] == 1
    assert not isinstance(again[0], SampleError)
    [memory] = (root / FORMATS_DIR).iterdir()
    assert json.loads(memory.read_text()) == {"mode": "json_object"}


# ---------------------------------------------------------------------------------------
# Semantic checks
# ---------------------------------------------------------------------------------------

SLIPS = [
    ("wrong_object", Task.SPATIO_TEMPORAL, RejectCode.WRONG_OBJECT_NAME),
    ("prose_time", Task.SPATIO_TEMPORAL, RejectCode.PROSE_TIME_OR_BOX),
    ("conclusion", Task.VIDEO_MCQ, RejectCode.CONCLUSION_MISMATCH),
    ("off_span", Task.TEMPORAL, RejectCode.KEY_FRAME_OFF_SPAN),
]


#: A sample whose slip needs a re-ask (a time in prose: inside a citing sentence).
PROSE_IN_CITING_SENTENCE = 0
SLIPPING = {"wrong_object": [0], "prose_time": [PROSE_IN_CITING_SENTENCE], "conclusion": [0], "off_span": [0]}


@pytest.mark.parametrize(("kind", "task", "code"), SLIPS)
def test_a_semantic_slip_is_re_asked_with_its_error_and_fixed(root, env, kind, task, code):
    span = (0.0, 3.0) if task is Task.TEMPORAL else (0.5, 2.5)
    with serve_llm(**noisy(kind, fix_rate=1.0)) as server:
        env(server)
        llm = annotator(root)
        [result] = llm.annotate_batch([work(n, task, span, apart=True) for n in SLIPPING[kind]])
        assert server.stats()["total"] == 2
    assert not isinstance(result, SampleError), result
    assert llm.usage.checks == {f"{kind}.caught": 1, f"{kind}.fixed": 1}


def test_a_box_named_for_another_object_is_swapped_for_that_objects_box_on_its_frame(root, env):
    """Every sample's first reply names a cat box "dog"; where the dog has a box on that frame,
    it takes the cat box's place (and its citations) without a request."""
    with serve_llm(**noisy("wrong_object")) as server:
        env(server)
        llm = annotator(root)
        results = llm.annotate_batch([work(n) for n in range(6)])
        requests = server.stats()["total"]
    swapped = llm.usage.checks.get("wrong_object.swapped", 0)
    assert swapped > 0 and requests == 6 + llm.usage.checks.get("wrong_object.caught", 0)
    for result in results:
        assert not isinstance(result, SampleError), result
        assert {(ev.name, tuple(ev.box)) for ev in result.evidence} == {("dog", tuple(BOXES["dog"]))}


def test_a_time_in_a_sentence_that_cites_nothing_is_dropped_without_a_request():
    reasoning = "The dog runs [B1]. At 99.5s the scene changes. It stops [B2] near the car."
    assert drop_uncited_prose(reasoning) == "The dog runs [B1]. It stops [B2] near the car."
    kept = "The dog runs [B1] at 3.0s. It stops."
    assert drop_uncited_prose(kept) == kept  # a time beside a citation: re-asked, not dropped


@pytest.mark.parametrize(("kind", "task", "code"), SLIPS)
def test_a_slip_no_re_ask_fixes_is_rejected_with_its_own_code(root, env, kind, task, code):
    span = (0.0, 3.0) if task is Task.TEMPORAL else (0.5, 2.5)
    with serve_llm(**noisy(kind, fix_rate=0.0)) as server:
        env(server)
        [result] = annotator(root).annotate_batch([work(n, task, span, apart=True) for n in SLIPPING[kind]])
        assert server.stats()["total"] == 3
    assert isinstance(result, SampleError) and result.code is code, result


def test_the_oracle_passes_every_check(root, env):
    works = [work(0), work(1, Task.VIDEO_MCQ), work(2, Task.TEMPORAL, (0.0, 3.0))]
    with serve_llm() as server:
        env(server)
        llm = annotator(root)
        results = llm.annotate_batch(works)
        assert server.stats()["total"] == 3
    assert not any(isinstance(r, SampleError) for r in results), results
    assert llm.usage.checks == {}


@pytest.mark.parametrize(
    ("reasoning", "bad"),
    [
        ("The dog runs [B1]. At 99.5s the scene changes.", "99.5s"),
        ("The dog runs [B1] for 3 seconds.", "3 seconds"),
        ("The dog is at [0.1, 0.2, 0.3, 0.4] [B1].", "[0.1, 0.2, 0.3, 0.4]"),
        ("It lasts 2.5 sec [SPAN].", "2.5 sec"),
    ],
)
def test_times_and_coordinates_in_prose_are_caught(reasoning, bad):
    with pytest.raises(ReplyError, match="states") as caught:
        check_prose(reasoning)
    assert bad in str(caught.value) and caught.value.code is RejectCode.PROSE_TIME_OR_BOX


def test_citations_and_plain_numbers_are_not_times_in_prose():
    check_prose("Frame 2 shows 3 dogs [B1, B2] during [SPAN]; the 2nd one sits [B3].")


def test_names_are_compared_in_the_detectors_vocabulary_through_the_alias_table():
    vocabulary = {"person", "dog", "car"}
    assert detector_name("The woman", vocabulary, DEFAULT_ALIASES) == "person"
    assert detector_name("dogs", vocabulary, DEFAULT_ALIASES) == "dog"
    assert detector_name("red sports car", vocabulary, DEFAULT_ALIASES) is None  # open vocabulary: the judge's


def test_an_open_vocabulary_label_wins_over_the_alias_table():
    """YOLO-World / YOLOE / GroundingDINO label a box with the sample's phrase ("man"): the model
    naming it "the man" means that label, not the closed set's "person" (a false wrong_object)."""
    labels = {"man", "red car"}
    assert detector_name("The man", labels | {"man"}, DEFAULT_ALIASES, labels) == "man"
    assert detector_name("red cars", labels, DEFAULT_ALIASES, labels) == "red car"
    assert detector_name("the woman", labels | {"woman"}, DEFAULT_ALIASES, labels) == "person"  # not a label here
    # The check itself: a box labelled "man" named "the man" passes (it was re-asked, then rejected).
    from stgr_builder.annotate.reply import Chosen, ReplyChecks, check_names
    from stgr_builder.annotate.request import Candidate, SampleView
    from stgr_builder.models import Detection, Frame

    frame = Frame(idx=0, time=0.0, path="f.jpg", width=64, height=64)
    man = Candidate(1, 1, frame, Detection(frame_idx=0, label="man", score=0.9, box=[0.1, 0.1, 0.5, 0.9]))
    car = Candidate(2, 1, frame, Detection(frame_idx=0, label="red car", score=0.9, box=[0.5, 0.5, 0.9, 0.9]))
    view = SampleView(None, ["man", "red car"], None, [frame], {1: man, 2: car}, None)  # type: ignore[arg-type]
    checks = ReplyChecks(aliases=DEFAULT_ALIASES)
    check_names(view, {1: Chosen(man, "the man"), 2: Chosen(car, "red car")}, checks)
    with pytest.raises(ReplyError, match="B1 shows a man"):
        check_names(view, {1: Chosen(man, "red car")}, checks)


# ---------------------------------------------------------------------------------------
# A build against the mistake-making policy
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_build_against_a_noisy_vlm_yields_rows_the_truth_finds_no_fault_in(tmp_path, env, monkeypatch):
    """A small seeded version of bench/noisy_vlm.py: every mistake kind at 30%, the checks and
    the judge on. The worst case is asserted: no wrong evidence box against the generator's
    truth, no time in prose and no off-span key frame in any row; most samples still rows."""
    import yaml

    from stgr_builder.audit import connect, summary
    from stgr_builder.audit.evidence import RIGHT_IOU, judge, load_truths
    from stgr_builder.dryrun.demo import demo_config, generate_demo
    from stgr_builder.models import Manifest
    from stgr_builder.pipeline import build

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "src"
    generate_demo(source, seed=1, n_videos=2, n_images=1)

    def run(name: str, policy: str, on: bool) -> Path:
        config = demo_config().model_dump(mode="json")
        config["annotator"].update(
            {
                "backend": "openai",
                "model": "stgr-dry-run",
                "prompt": "stgr-cot-llm",
                "timeout": 20.0,
                "max_retries": 1,
                "max_tokens": 1024,
                "checks": {"enabled": on},
                "judge": {"enabled": on},
            }
        )
        path = source / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        rates = dict.fromkeys(MISTAKE_KINDS, 0.3)
        with serve_llm(policy=policy, noisy=options_from(rates, seed=1, refuse_json_schema=True)) as server:
            env(server)
            build(path, tmp_path / name)
        return tmp_path / name

    bare, noisy_out = run("bare", "oracle", False), run("noisy", "noisy", True)
    manifest = Manifest.model_validate_json((noisy_out / "manifest.json").read_text())
    with connect(noisy_out) as con:
        rows = con.execute("SELECT id, source, video_path, image_path, key_items FROM cot").fetchall()
        traces = [r[0] for r in con.execute("SELECT reasoning_process FROM cot").fetchall()]
        voted = con.execute("SELECT provenance.judge_votes, provenance.verifier_votes, key_items FROM cot").fetchall()
    with connect(bare) as con:
        bare_rows = con.execute("SELECT count(*) FROM cot").fetchone()[0]
        unjudged = con.execute("SELECT count(*) FROM cot WHERE provenance.judge_votes IS NOT NULL").fetchone()[0]
    # The judge's votes per evidence box, in key_items order; none without a judge.
    assert voted and all(
        per_box == [1] * sum(len(item["boxes"]) for item in items) and total == len(per_box)
        for per_box, total, items in voted
    )
    assert unjudged == 0
    assert manifest.llm.judge_requests <= 1.5 * len(voted)  # the row's crops in one request
    judged = judge(load_truths(manifest), rows)
    assert judged and all(iou >= RIGHT_IOU for *_, iou in judged)
    tagged = re.compile(r"<(t|box)>.*?</\1>")
    for trace in traces:
        check_prose(tagged.sub(" ", trace))  # raises on a time or coordinates in prose
    assert len(rows) >= 0.8 * bare_rows
    checks = manifest.llm.checks
    assert sum(v for k, v in checks.items() if k.endswith(".caught")) > 0  # the mistakes were made
    assert checks["format.fallback"] >= 1 and checks["judge.yes"] > 0
    titles = {table.title: table for table in summary(noisy_out)}
    assert {row[0] for row in titles["Annotation checks"].rows} >= {"wrong_object", "prose_time"}


def test_the_plan_shows_the_judges_cost(tmp_path):
    """``stgr plan`` counts the judge's requests (votes per object) and prices them."""
    import yaml
    from typer.testing import CliRunner

    from stgr_builder.cli import app
    from stgr_builder.dryrun.demo import demo_config, generate_demo

    source = tmp_path / "src"
    generate_demo(source, seed=0, n_videos=1, n_images=1)
    estimates = {}
    for name, judge in (("off", {"enabled": False}), ("on", {"enabled": True, "votes": 3, "threshold": 2})):
        config = demo_config().model_dump(mode="json")
        config["annotator"].update({"backend": "openai", "model": "m", "prompt": "stgr-cot-llm", "judge": judge})
        path = source / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        out = tmp_path / f"{name}.json"
        prices = ["--price-in", "2.5", "--price-out", "10"]
        result = CliRunner().invoke(app, ["plan", str(path), *prices, "--json", str(out)])
        assert result.exit_code == 0, result.output
        estimates[name] = json.loads(out.read_text())["estimate"]
    assert estimates["off"]["crop_requests"] == 0
    on = estimates["on"]
    assert on["crop_requests"] % 3 == 0 and on["crop_requests"] >= 3 * on["requests"] > 0  # 3 votes an object
    assert estimates["on"]["cost"] > estimates["off"]["cost"]
