"""The embedded demo source: deterministic, every task type, answers in the exact forms,
spans that agree with what was drawn."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stgr_builder.dryrun.demo import DEMO_CLASSES, generate_demo, load_truth, render_training_frame  # noqa: E402
from stgr_builder.models import BuildConfig, Task  # noqa: E402
from stgr_builder.sources import ingest  # noqa: E402
from stgr_builder.sources.demo import DemoRecord  # noqa: E402

pytestmark = pytest.mark.slow  # generates the demo media (~15 s)

SPAN = r"\[(\d+\.\d), (\d+\.\d)\]"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0)
    return out


@pytest.fixture(scope="module")
def records(demo) -> list[dict]:
    return [json.loads(line) for line in (demo / "demo_source.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def truth(demo):
    return load_truth(demo / "truth.json")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(demo, tmp_path):
    again = tmp_path / "again"
    generate_demo(again, seed=0)
    first, second = _files(demo), _files(again)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.endswith(".mp4")]) == 6
    assert len([k for k in first if k.endswith(".jpg")]) == 3
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs with seed 0"

    other = tmp_path / "other"
    generate_demo(other, seed=1, n_videos=1, n_images=1)
    assert (other / "media/videos/v000.mp4").read_bytes() != first["media/videos/v000.mp4"]
    assert (other / "demo_source.jsonl").read_text() != first["demo_source.jsonl"].decode()


def test_more_videos_do_not_change_earlier_ones(demo, tmp_path):
    generate_demo(tmp_path, seed=0, n_videos=2, n_images=1)
    assert (tmp_path / "media/videos/v001.mp4").read_bytes() == (demo / "media/videos/v001.mp4").read_bytes()


def test_every_task_type_several_times(records):
    tasks = [r["task"] for r in records]
    for task in Task:
        assert tasks.count(task.value) >= 3, f"{task.value!r} appears {tasks.count(task.value)} times"
    for r in records:
        DemoRecord.model_validate(r)  # the adapter's format
        assert set(r) >= {"id", "task", "question", "options", "answer", "span", "objects"}
        assert ("video" in r) != ("image" in r)
        assert all(name in DEMO_CLASSES for name in r["objects"])
        assert r["objects"], f"{r['id']} names no object to ground"
    assert len({r["id"] for r in records}) == len(records)


def test_answers_have_the_exact_form_of_their_task(records, truth):
    images = {im.path: im for im in truth.images}
    for r in records:
        task, answer = Task(r["task"]), r["answer"]
        if task is Task.TEMPORAL:
            m = re.fullmatch(SPAN, answer)
            assert m and [float(m[1]), float(m[2])] == r["span"], r
        elif task is Task.TEMPORAL_MCQ:
            m = re.fullmatch(r"([A-D])\n" + SPAN, answer)
            assert m and [float(m[2]), float(m[3])] == r["span"], r
            assert "ABCD".index(m[1]) < len(r["options"])
            assert r["options"][("ABCD".index(m[1]))] == r["objects"][0]
        elif task is Task.VIDEO_MCQ:
            assert re.fullmatch(r"[A-D]", answer) and "ABCD".index(answer) < len(r["options"]), r
            assert len(set(r["options"])) == len(r["options"]) >= 3
        elif task is Task.VISUAL:
            m = re.fullmatch(r"<obj>(\w+)</obj><box>\[(\d+), (\d+), (\d+), (\d+)\]</box>", answer)
            assert m, r
            image = images[r["image"]]
            gold = {o.name: o.box for o in image.objects}
            assert [int(v) for v in m.groups()[1:]] == gold[m[1]]
            assert r["objects"] == [m[1]]
        else:
            assert answer and "<" not in answer and "\n" not in answer, r
        if task in (Task.TEMPORAL, Task.TEMPORAL_MCQ, Task.SPATIO_TEMPORAL):
            assert r["span"] is not None and "video" in r
        else:
            assert r["span"] is None


def test_spans_agree_with_truth_and_pass_the_papers_filters(records, truth):
    videos = {v.path: v for v in truth.videos}
    with_span = [r for r in records if r["span"] is not None]
    assert len(with_span) >= 20
    for r in with_span:
        video = videos[r["video"]]
        start, end = r["span"]
        assert 0 <= start < end < video.duration
        assert (end - start) / video.duration < 0.5, r
        obj = next(o for o in video.objects if o.name == r["objects"][0])
        visible = [i for i, box in enumerate(obj.boxes) if box is not None]
        assert visible == list(range(visible[0], visible[-1] + 1)), "one visit per object"
        assert start == round(visible[0] / video.fps, 1) and end == round(visible[-1] / video.fps, 1)


def test_grounded_objects_are_whole_and_visible_inside_their_spans(records, truth):
    videos = {v.path: v for v in truth.videos}
    for r in (r for r in records if r["span"] is not None):
        video = videos[r["video"]]
        obj = next(o for o in video.objects if o.name == r["objects"][0])
        boxes = [b for b in obj.boxes if b is not None]
        max_w = max(b[2] - b[0] for b in boxes)
        max_h = max(b[3] - b[1] for b in boxes)
        for t in np.linspace(r["span"][0], r["span"][1], 6):
            frame = min(max(int(round(t * video.fps)), 0), video.n_frames - 1)
            box = obj.boxes[frame]
            if box is None:  # only the rounding of the span's ends may step outside the visit
                assert min(abs(t - r["span"][0]), abs(t - r["span"][1])) < 0.1, (r["id"], t)
                continue
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= video.width and 0 <= y1 < y2 <= video.height
            # Not cut by the frame edge: about as wide and as tall as the object ever is (a
            # bird's height changes with its wings, a walker's width with its stride).
            assert obj.name == "person" or x2 - x1 >= 0.85 * max_w, (r["id"], t, box)
            assert obj.name == "bird" or y2 - y1 >= 0.85 * max_h, (r["id"], t, box)
            assert 0.1 <= (x2 - x1) / video.width <= 0.45 or obj.name == "person"


def test_objects_of_a_video_barely_overlap(truth):
    for video in truth.videos:
        assert len({o.name for o in video.objects}) == len(video.objects), "classes are unique per video"
        for frame in range(0, video.n_frames, 3):
            boxes = [o.boxes[frame] for o in video.objects if o.boxes[frame] is not None]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:
                    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
                    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
                    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                    assert ix * iy <= 0.3 * smaller


def test_videos_are_what_truth_says(demo, truth):
    durations = sorted(v.duration for v in truth.videos)
    assert durations[0] < 10 and durations[-1] > 40
    assert len({v.fps for v in truth.videos}) >= 4 and len({v.gop for v in truth.videos}) >= 4
    video = min(truth.videos, key=lambda v: v.n_frames)
    with av.open(str(demo / "media" / video.path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", video.width, video.height)
        keyframes = [i for i, frame in enumerate(container.decode(stream)) if frame.key_frame]
    assert keyframes == list(range(0, video.n_frames, video.gop))
    for image in truth.images:
        with Image.open(demo / "media" / image.path) as im:
            assert im.size == (image.width, image.height)


def test_demo_mcq_answers_agree_with_truth(records, truth):
    videos = {v.path: v for v in truth.videos}
    for r in records:
        if r["task"] == Task.VIDEO_MCQ.value:
            video = videos[r["video"]]
            chosen = r["options"]["ABCD".index(r["answer"])]
            if r["question"] == "Which object appears first in the video?":
                first = min(video.objects, key=lambda o: next(i for i, b in enumerate(o.boxes) if b))
                assert chosen == first.name
            else:
                obj = next(o for o in video.objects if o.name == r["objects"][0])
                assert chosen == obj.colour


def test_the_demo_adapter_ingests_every_item(demo, records):
    config = BuildConfig(
        sources=[{"name": "STR_demo", "adapter": "demo", "path": "demo_source.jsonl", "media_root": "media"}]
    )
    samples, rejects, stats = ingest(config, demo)
    assert rejects == [] and stats.kept == len(records) == len(samples)
    by_source_id = {s.source_id: s for s in samples}
    for r in records:
        sample = by_source_id[r["id"]]
        assert (sample.task.value, sample.answer, sample.options) == (r["task"], r["answer"], r["options"])
        assert sample.span == r["span"] and [o.name for o in sample.objects] == r["objects"]
        assert Path(sample.media_root, sample.video_path or sample.image_path).is_file()


def test_training_frames_are_seeded_and_labelled():
    a_rgb, a_labels = render_training_frame(np.random.default_rng(3))
    b_rgb, b_labels = render_training_frame(np.random.default_rng(3))
    assert np.array_equal(a_rgb, b_rgb) and a_labels == b_labels
    rng = np.random.default_rng(0)
    classes = set()
    for _ in range(30):
        rgb, labels = render_training_frame(rng)
        assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
        assert rgb.std() > 20, "textured scene, not a flat colour"
        for cls, (x1, y1, x2, y2) in labels:
            classes.add(cls)
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    assert classes == set(DEMO_CLASSES)
