"""stgr plan estimates the media work (probe, decode, store, detect) beside the LLM's."""

from __future__ import annotations

import math

import pytest
import yaml

from stgr_builder.detect.yolo import UltralyticsDetector
from stgr_builder.dryrun.demo import demo_config, generate_demo, write_demo_config
from stgr_builder.models import VideoInfo
from stgr_builder.pipeline import build, context
from stgr_builder.planning import (
    DECODE_S_PER_MPX,
    DETECT_S_PER_FRAME,
    DETECT_STARTUP_S,
    detector_frames,
    make_plan,
    media_seconds,
)


@pytest.mark.slow  # times a demo build
def test_plan_estimates_decode_and_detect_time_of_the_demo(tmp_path):
    path = write_demo_config(tmp_path / "CONFIG.yaml")
    config = context(path, tmp_path / "out").config
    estimate = make_plan(config, tmp_path).estimate
    assert estimate.frames > 0 and estimate.decoded_frames >= estimate.frames - 20  # stills are not decoded
    assert estimate.decode_seconds > 0 and estimate.detect_seconds > 0
    assert estimate.assumptions["detect_s_per_frame_cpu"] == DETECT_S_PER_FRAME


def test_decode_cost_grows_with_the_gop_and_the_pixels(tmp_path):
    from stgr_builder.models import BuildConfig, SourceSample, Task, sample_id

    config = BuildConfig.model_validate(
        {"sources": [{"name": "STR_x", "adapter": "demo", "path": "x.jsonl", "media_root": "."}]}
    )
    sample = SourceSample(
        id=sample_id("STR_x", "1", "q"),
        source="STR_x",
        source_id="1",
        task=Task.VIDEO_MCQ,
        question="q",
        answer="A",
        video_path="v.mp4",
        media_root=str(tmp_path),
    )

    def info(gop: int, width: int) -> VideoInfo:
        return VideoInfo(
            path="v.mp4",
            duration=60,
            fps=30,
            n_frames=1800,
            width=width,
            height=width * 9 // 16,
            keyframes=list(range(0, 1800, gop)),
        )

    short, long_gop, large = (
        media_seconds(config, [(sample, info(gop, width))]) for gop, width in ((30, 640), (300, 640), (30, 1280))
    )
    assert short[0] < long_gop[0] and short[1] < long_gop[1]  # more frames decoded per wanted frame
    assert large[0] == short[0] and large[1] > short[1]  # same frames, four times the pixels
    assert short[2] == long_gop[2] == large[2]  # detection is per frame
    assert short[1] >= short[0] * 640 * 360 / 1e6 * DECODE_S_PER_MPX


def test_the_track_gates_neighbour_frames_are_planned_as_decoded_and_detected(tmp_path):
    from stgr_builder.models import BuildConfig, ImageInfo, SourceSample, Task, sample_id
    from stgr_builder.video.plan import plan_frames

    def config(track: bool) -> BuildConfig:
        return BuildConfig.model_validate(
            {
                "sources": [{"name": "STR_x", "adapter": "demo", "path": "x.jsonl", "media_root": "."}],
                "track": {"enabled": track},
            }
        )

    sample = SourceSample(
        id=sample_id("STR_x", "1", "q"),
        source="STR_x",
        source_id="1",
        task=Task.VIDEO_MCQ,
        question="q",
        answer="A",
        video_path="v.mp4",
        media_root=str(tmp_path),
    )
    still = SourceSample(
        id=sample_id("STR_x", "2", "q"),
        source="STR_x",
        source_id="2",
        task=Task.VIDEO_MCQ,
        question="q",
        answer="A",
        image_path="i.jpg",
        media_root=str(tmp_path),
    )
    video = VideoInfo(
        path="v.mp4", duration=60, fps=30, n_frames=1800, width=640, height=360, keyframes=list(range(0, 1800, 30))
    )
    image = ImageInfo(path="i.jpg", width=640, height=480)
    rows = [(sample, video), (still, image)]
    wanted = len(plan_frames(video, config(True).sampler, None, []).indices)  # spread far apart
    whole = config(True).model_copy(update={"track": config(True).track.model_copy(update={"staged": False})})
    off, on = media_seconds(config(False), rows), media_seconds(whole, rows)
    # window 2: each candidate frame and the 2 on each side, in batches of 16 frames of one size;
    # the still and its 2 altered views: a batch of their own size (padded)
    assert detector_frames(whole, rows) == math.ceil(wanted * 5 / 16) * 16 + 16
    assert on[2] == DETECT_STARTUP_S + detector_frames(whole, rows) * DETECT_S_PER_FRAME
    assert off[2] == DETECT_STARTUP_S + (math.ceil(wanted / 16) * 16 + 16) * DETECT_S_PER_FRAME
    assert on[0] > off[0] and on[1] > off[1]

    # staged: one neighbour of each candidate, the rest of the window for a share of them, in
    # rounds of their own, each padded (on a set this small the padding outweighs the saving)
    def unpadded(c: BuildConfig) -> BuildConfig:
        return c.model_copy(update={"detector": c.detector.model_copy(update={"batch": 1})})

    assert detector_frames(unpadded(config(False)), rows) == wanted + 1
    assert detector_frames(unpadded(whole), rows) == wanted * 5 + 3
    assert wanted * 2 + 2 < detector_frames(unpadded(config(True)), rows) < wanted * 5 + 3


@pytest.mark.parametrize("track", [{"enabled": False}, {"staged": False}, {}], ids=["off", "whole", "staged"])
def test_the_plan_counts_the_frames_a_build_sends_through_the_detector(tmp_path, monkeypatch, track):
    """Many samples per video dealt into many shards, stills of other sizes: the plan used to
    count each distinct frame once and miss the padding of every batch of one frame size to
    detector.batch (the 89-sample set: 4-7x more detection than planned)."""
    generate_demo(tmp_path, seed=5, n_videos=3, n_images=3)
    config = demo_config().model_dump(mode="json")
    config["track"].update(track)
    config["sharding"].update(samples_per_shard=8, workers=1)
    # The span check's probes fall on the demo's empty background, frames of identical content
    # that share one file (detected once), which the plan cannot see: measured without them.
    config["span_check"]["mode"] = "off"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    through_model: list[int] = []
    detect = UltralyticsDetector.detect

    def counted(self, images, phrases=None):
        before = self.frames_inferred
        found = detect(self, images, phrases)
        through_model.append(self.frames_inferred - before)
        return found

    monkeypatch.setattr(UltralyticsDetector, "detect", counted)
    plan = make_plan(context(path, tmp_path / "out").config, tmp_path)
    build(path, tmp_path / "out")
    frames = plan.estimate.detector_frames
    if track.get("staged", True) and track.get("enabled", True):  # depends on the boxes: estimated
        assert 0.65 * sum(through_model) <= frames <= 1.35 * sum(through_model), (
            frames,
            sum(through_model),
            through_model,
        )
    else:  # frames of identical content share one file, detected once: the plan cannot see that
        assert sum(through_model) <= frames <= 1.15 * sum(through_model), (frames, through_model)


def test_an_open_vocabulary_detector_is_planned_once_per_phrase_set(tmp_path):
    """Two questions about one video with other objects: a closed-set detector sees its frames
    once, YOLOE once per phrase set, each set in batches of its own (detect/base.py)."""
    from stgr_builder.models import BuildConfig, SourceObject, SourceSample, Task, sample_id
    from stgr_builder.video.plan import plan_frames

    def config(backend: str) -> BuildConfig:
        return BuildConfig.model_validate(
            {
                "sources": [{"name": "STR_x", "adapter": "demo", "path": "x.jsonl", "media_root": "."}],
                "track": {"enabled": False},
                "span_check": {"mode": "off"},
                "detector": {"backend": backend, "batch": 1},
            }
        )

    def asking(number: int, *names: str) -> SourceSample:
        return SourceSample(
            id=sample_id("STR_x", str(number), "q"),
            source="STR_x",
            source_id=str(number),
            task=Task.VIDEO_MCQ,
            question="q",
            answer="A",
            video_path="v.mp4",
            media_root=str(tmp_path),
            objects=[SourceObject(name=name) for name in names],
        )

    video = VideoInfo(
        path="v.mp4", duration=60, fps=30, n_frames=1800, width=640, height=360, keyframes=list(range(0, 1800, 30))
    )
    wanted = len(plan_frames(video, config("ultralytics").sampler, None, []).indices)
    same = [(asking(1, "dog"), video), (asking(2, "dog"), video)]
    other = [(asking(1, "dog"), video), (asking(2, "cat", "dog"), video)]
    assert detector_frames(config("ultralytics"), other) == wanted
    assert detector_frames(config("yoloe"), same) == wanted
    assert detector_frames(config("yoloe"), other) == 2 * wanted
