"""Sample stage: frame plans, GOP-wise decoding (decord and OpenCV), the JPEG store, the step."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from stgr_builder.core.encode import encode_h264
from stgr_builder.core.steps import run_steps
from stgr_builder.models import (
    Reject,
    RejectCode,
    SamplerConfig,
    SampleWork,
    SourceSample,
    Task,
    VideoInfo,
    sample_id,
)
from stgr_builder.video import FrameStore, ProbeStep, SampleStep, get_decoder, plan_decode, plan_frames, probe_video

FPS, GOP, N, W, H = 25, 25, 250, 128, 96  # 10 s, a key frame every second


def source_frames(n: int = N) -> list[np.ndarray]:
    """Frame i: its own grey level plus a white bar at x = 4 i (neighbours differ a lot)."""
    out = []
    for i in range(n):
        rgb = np.full((H, W, 3), (i * 37) % 200 + 20, dtype=np.uint8)
        rgb[:, (i * 4) % (W - 8) : (i * 4) % (W - 8) + 8] = 255
        out.append(rgb)
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    encode_h264(root / "clip.mp4", source_frames(), fps=FPS, gop=GOP)
    encode_h264(root / "other.mp4", source_frames(100), fps=FPS, gop=GOP)
    Image.fromarray(np.tile(np.arange(90, dtype=np.uint8)[None, :, None], (50, 1, 3))).save(root / "pic.png")
    return root


@pytest.fixture(scope="module")
def info(media) -> VideoInfo:
    return probe_video(media / "clip.mp4", "clip.mp4")


def video_info(n_frames=300, fps=30.0, gop=30) -> VideoInfo:
    return VideoInfo(
        path="v.mp4",
        duration=n_frames / fps,
        fps=fps,
        n_frames=n_frames,
        width=64,
        height=48,
        keyframes=list(range(0, n_frames, gop)),
    )


def work(media_root: Path, video=None, image=None, span=None, n=0) -> SampleWork:
    sample = SourceSample(
        id=sample_id("STR_test", str(n), "q"),
        source="STR_test",
        source_id=str(n),
        task=Task.SPATIO_TEMPORAL,
        question="q",
        answer="a",
        video_path=video,
        image_path=image,
        media_root=str(media_root),
        span=span,
    )
    return SampleWork(sample=sample)


# --- plans ----------------------------------------------------------------------------


def test_uniform_plan_is_sorted_unique_deterministic_and_spread():
    info = video_info()
    plan = plan_frames(info, SamplerConfig(num_frames=8, span_frames=0))
    assert plan.indices == sorted(set(plan.indices)) and len(plan.indices) == 8
    assert plan == plan_frames(info, SamplerConfig(num_frames=8, span_frames=0))
    gaps = np.diff(plan.indices)
    assert gaps.min() == gaps.max() == 300 // 8 or gaps.max() - gaps.min() <= 1
    assert plan.indices[0] > 0 and plan.indices[-1] < 299  # segment centres, not the ends


def test_fixed_rate_plan_and_max_frames_cap_keep_the_span_frames():
    info = video_info()  # 10 s
    assert plan_frames(info, SamplerConfig(strategy="fixed_rate", fps=1, max_frames=99, span_frames=0)).indices == list(
        range(0, 300, 30)
    )
    plan = plan_frames(
        info, SamplerConfig(strategy="fixed_rate", fps=10, max_frames=12, span_frames=4), span=[2.0, 3.0]
    )
    assert len(plan.indices) == 12
    assert len(plan.in_span) == 4 and set(plan.in_span) <= set(plan.indices)
    assert plan.indices[0] < 60 and plan.indices[-1] > 90  # the rest still covers the video


@pytest.mark.parametrize(
    "span", [[2.0, 3.0], [0.0, 0.5], [9.5, 10.0], [4.01, 4.02], [4.0, 4.0 + 1 / 30], [1.234, 7.891], [0.0, 10.0]]
)
def test_span_frames_lie_inside_the_span(span):
    info = video_info()
    plan = plan_frames(info, SamplerConfig(num_frames=3, span_frames=5, max_frames=8), span=span)
    for idx in plan.in_span:
        assert span[0] - 1e-9 <= idx / info.fps <= span[1] + 1e-9
    inside = [i for i in range(300) if span[0] - 1e-9 <= i / 30 <= span[1] + 1e-9]
    assert len(plan.in_span) == min(5, len(inside))  # as many as asked, where the span has them


def test_decode_plan_groups_by_gop():
    reads = plan_decode([0, 30, 60, 90], [95, 31, 5, 59, 31, 60])
    assert [(r.key, r.frames) for r in reads] == [(0, (5,)), (30, (31, 59)), (60, (60,)), (90, (95,))]


# --- decoding -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
def test_each_gop_is_decoded_at_most_once(media, info, backend):
    wanted = [3, 20, 24, 25, 60, 74, 130, 131, 240]  # GOPs 0, 25, 50, 125, 225
    decoder = get_decoder(backend)
    got = list(decoder.iter_frames(media / "clip.mp4", info, wanted))
    assert [f.idx for f in got] == wanted
    assert decoder.stats.gop_reads == [0, 25, 50, 125, 225]  # once each, in order
    assert decoder.stats.frames_decoded < 150  # vs 250 for the whole video
    assert decoder.stats.videos == 1


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
def test_decoded_frames_are_the_right_frames_at_exact_times(media, info, backend):
    wanted = [0, 1, 24, 25, 26, 99, 137, 200, 249]
    got = list(get_decoder(backend).iter_frames(media / "clip.mp4", info, wanted))
    source = source_frames()
    for frame in got:
        assert frame.time == pytest.approx(frame.idx / FPS, abs=1e-6)
        assert frame.rgb.shape == (H, W, 3) and frame.rgb.dtype == np.uint8
        errors = [np.abs(frame.rgb.astype(int) - source[i].astype(int)).mean() for i in range(N)]
        assert int(np.argmin(errors)) == frame.idx  # its own source frame is the closest
        assert errors[frame.idx] < 3.0


@pytest.fixture(scope="module")
def bframes(media) -> Path:
    """Real-world H.264 has B-frames (decode order != presentation order): make one."""
    path = media / "bframes.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": "3"}
        for rgb in source_frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
def test_b_frames_decode_to_the_right_frames_and_times(bframes, backend):
    info = probe_video(bframes, "bframes.mp4")
    assert info.keyframes == list(range(0, N, GOP)) and info.duration == pytest.approx(N / FPS)
    wanted = [0, 3, 24, 25, 26, 99, 137, 249]
    decoder = get_decoder(backend)
    got = list(decoder.iter_frames(bframes, info, wanted))
    source = source_frames()
    assert [f.idx for f in got] == wanted
    for frame in got:
        assert frame.time == pytest.approx(frame.idx / FPS, abs=1e-6)
        errors = [np.abs(frame.rgb.astype(int) - source[i].astype(int)).mean() for i in range(N)]
        assert int(np.argmin(errors)) == frame.idx
    assert len(decoder.stats.gop_reads) == len(set(decoder.stats.gop_reads))


def test_decord_and_opencv_agree_on_times_and_pixels(media, info):
    wanted = list(range(0, N, 7))
    a = list(get_decoder("decord").iter_frames(media / "clip.mp4", info, wanted))
    b = list(get_decoder("opencv").iter_frames(media / "clip.mp4", info, wanted))
    assert [f.idx for f in a] == [f.idx for f in b] == wanted
    assert max(abs(x.time - y.time) for x, y in zip(a, b, strict=False)) < 1e-4
    assert max(np.abs(x.rgb.astype(int) - y.rgb.astype(int)).mean() for x, y in zip(a, b, strict=False)) < 1.0


def test_decoder_rejects_out_of_range_indices(media, info):
    with pytest.raises(ValueError):
        list(get_decoder("decord").iter_frames(media / "clip.mp4", info, [N]))


# --- the store ------------------------------------------------------------------------


def test_store_is_content_addressed_atomic_and_dedups(tmp_path):
    store = FrameStore(tmp_path, quality=90)
    frames = source_frames(3)
    first = store.put(frames[0])
    assert re.fullmatch(r"kfs/([0-9a-f]{2})/\1[0-9a-f]{30}\.jpg", first)
    target = tmp_path / first
    stamp = target.stat().st_mtime_ns
    assert store.put(frames[0].copy()) == first  # same pixels, same path
    assert target.stat().st_mtime_ns == stamp and store.written == 1  # not rewritten
    assert store.put(frames[1]) != first and store.written == 2
    assert FrameStore(tmp_path, quality=60).put(frames[0]) != first  # other bytes, other address
    assert not list(tmp_path.rglob(".tmp-*"))
    decoded = np.asarray(Image.open(target))
    assert np.abs(decoded.astype(int) - frames[0].astype(int)).mean() < 3.0


# --- the step -------------------------------------------------------------------------


def probe_and_sample(items, config=SamplerConfig(), root=None):
    store = FrameStore(root, quality=config.jpeg_quality)
    step = SampleStep(config, store)
    return run_steps(items, [ProbeStep(), step]), step, store


def test_sample_step_writes_frames_with_exact_times(media, tmp_path):
    (out,), step, store = probe_and_sample([work(media, "clip.mp4", span=[4.0, 6.0])], root=tmp_path)
    assert isinstance(out, SampleWork)
    plan = plan_frames(out.video, SamplerConfig(), span=[4.0, 6.0])
    assert [f.idx for f in out.frames] == plan.indices
    for frame in out.frames:
        assert frame.time == pytest.approx(frame.idx / FPS, abs=1e-6)
        assert (frame.width, frame.height) == (W, H)
        assert (tmp_path / frame.path).is_file()
    assert all(4.0 <= f.time <= 6.0 for f in out.frames if f.idx in plan.in_span)
    assert (step.stats.seen, step.stats.kept) == (1, 1)


def test_samples_of_one_video_share_one_open_and_one_pass(media, tmp_path):
    spans = [[1.0, 3.0], [1.5, 2.5], [6.0, 9.0], None]
    items = [work(media, "clip.mp4", span=span, n=k) for k, span in enumerate(spans)]
    items.insert(1, work(media, image="pic.png", n=10))
    out, step, store = probe_and_sample(items, root=tmp_path)
    assert [o.sample.id for o in out] == [i.sample.id for i in items]  # order kept
    assert step.decoder.stats.videos == 1  # one open for four samples
    union = {f.idx for o in out for f in o.frames if o.sample.video_path}
    assert step.decoder.stats.gop_reads == sorted({i - i % GOP for i in union})  # each GOP once
    paths = {f.path for o in out for f in o.frames}
    assert store.written == len(paths) < sum(len(o.frames) for o in out)  # shared frames stored once
    assert [(f.idx, f.time, f.width, f.height) for f in out[1].frames] == [(0, 0.0, 90, 50)]
    assert np.asarray(Image.open(tmp_path / out[1].frames[0].path)).shape == (50, 90, 3)


def test_batch_with_several_videos_keeps_order(media, tmp_path):
    items = [work(media, "clip.mp4", n=0), work(media, "other.mp4", n=1), work(media, "clip.mp4", n=2)]
    out, step, _ = probe_and_sample(items, root=tmp_path)
    assert [o.sample.id for o in out] == [i.sample.id for i in items]
    assert [o.video.path for o in out] == ["clip.mp4", "other.mp4", "clip.mp4"]
    assert out[0].frames == out[2].frames and out[1].frames != out[0].frames
    assert step.decoder.stats.videos == 2


def test_decode_failure_becomes_a_reject(media, tmp_path):
    broken = tmp_path / "media"
    broken.mkdir()
    (broken / "clip.mp4").write_bytes((media / "clip.mp4").read_bytes())
    probed = run_steps(
        [work(broken, "clip.mp4", n=k) for k in range(2)] + [work(media, "clip.mp4", n=5)], [ProbeStep()]
    )
    (broken / "clip.mp4").write_bytes(b"\x00" * 5000)  # the file changed after probing
    step = SampleStep(SamplerConfig(), FrameStore(tmp_path / "out", 90))
    out = run_steps(probed, [step])
    assert [type(o).__name__ for o in out] == ["Reject", "Reject", "SampleWork"]
    assert {(o.code, o.stage.value) for o in out[:2]} == {(RejectCode.DECODE_FAILED, "sample")}
    assert "clip.mp4" in out[0].message
    assert step.stats.rejected == {"decode_failed": 2} and step.stats.kept == 1


def test_sample_step_rejects_and_passes_rejects_through(media, tmp_path):
    items = [work(media, "missing.mp4", n=0), work(media, "clip.mp4", n=1), work(media, image="gone.png", n=2)]
    results, step, _ = probe_and_sample(items, root=tmp_path)
    by_id = {o.id if isinstance(o, Reject) else o.sample.id: o for o in results}
    out = [by_id[i.sample.id] for i in items]  # batching steps let rejects overtake samples
    assert isinstance(out[0], Reject) and out[0].code == RejectCode.MEDIA_MISSING and out[0].stage.value == "probe"
    assert isinstance(out[1], SampleWork) and len(out[1].frames) == SamplerConfig().num_frames
    assert isinstance(out[2], Reject) and out[2].code == RejectCode.MEDIA_MISSING
    assert step.stats.seen == 1  # the sample step only saw the one good sample


def test_opencv_backend_gives_the_same_rows(media, tmp_path):
    items = [work(media, "clip.mp4", span=[2.0, 5.0])]
    (a,), _, _ = probe_and_sample(items, SamplerConfig(decoder="decord"), tmp_path / "a")
    (b,), _, _ = probe_and_sample(
        [work(media, "clip.mp4", span=[2.0, 5.0])], SamplerConfig(decoder="opencv"), tmp_path / "b"
    )
    assert [(f.idx, f.time) for f in a.frames] == [(f.idx, f.time) for f in b.frames]
