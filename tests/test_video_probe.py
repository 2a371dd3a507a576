"""Probe stage: real H.264 files made with encode_h264, and every kind of bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from stgr_builder.core.encode import encode_h264
from stgr_builder.core.steps import run_steps
from stgr_builder.errors import SampleError
from stgr_builder.models import FilterConfig, Reject, RejectCode, SampleWork, SourceSample, Task, sample_id
from stgr_builder.video import ProbeStep, probe_image, probe_video, read_frames

FPS, GOP, N = 25, 10, 75  # 3.0 s


def frames(n: int, width: int = 128, height: int = 96):
    """Frame i has its own grey level and a white bar at x = 4 i: easy to tell apart."""
    for i in range(n):
        rgb = np.full((height, width, 3), (i * 37) % 200 + 20, dtype=np.uint8)
        rgb[:, (i * 4) % (width - 8) : (i * 4) % (width - 8) + 8] = 255
        yield rgb


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    encode_h264(root / "clip.mp4", frames(N), fps=FPS, gop=GOP)
    encode_h264(root / "long.mp4", frames(300), fps=FPS, gop=50)  # 12 s
    return root


def work(
    media_root: Path,
    video: str | None = None,
    image: str | None = None,
    span=None,
    task: Task = Task.SPATIO_TEMPORAL,
    source: str = "STR_test",
    n: int = 0,
) -> SampleWork:
    question = f"q{n}"
    sample = SourceSample(
        id=sample_id(source, str(n), question),
        source=source,
        source_id=str(n),
        task=task,
        question=question,
        answer="a",
        video_path=video,
        image_path=image,
        media_root=str(media_root),
        span=span,
    )
    return SampleWork(sample=sample)


# --- a good video --------------------------------------------------------------------


def test_probe_reports_exact_timing_and_the_encoded_gop(media):
    info = probe_video(media / "clip.mp4", "clip.mp4")
    assert info.path == "clip.mp4"
    assert (info.n_frames, info.fps, info.width, info.height) == (N, FPS, 128, 96)
    assert info.duration == pytest.approx(N / FPS, abs=1e-6)  # end of the last frame
    assert info.keyframes == list(range(0, N, GOP))


def test_decoded_timestamps_are_exact(media):
    info = probe_video(media / "clip.mp4", "clip.mp4")
    got = read_frames(media / "clip.mp4", info, range(N))
    assert [f.idx for f in got] == list(range(N))
    assert max(abs(f.time - f.idx / FPS) for f in got) < 1e-6


# --- bad input ------------------------------------------------------------------------


def _faststart_copy(src: Path, dst: Path) -> None:
    """Remux with the index (moov) first, so a truncated copy still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)


def _audio_only(dst: Path) -> None:
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for k in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def bad(media, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    good = (media / "clip.mp4").read_bytes()
    (root / "zero.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(random.Random(0).randbytes(20_000))
    (root / "text.mp4").write_text("this is not a video\n" * 100)
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])  # index (moov) at the end: lost
    _faststart_copy(media / "clip.mp4", root / "faststart.mp4")
    fast = (root / "faststart.mp4").read_bytes()
    (root / "truncated_faststart.mp4").write_bytes(fast[: len(fast) * 2 // 3])  # index kept, frames lost
    start, end = good.find(b"mdat") + 104, good.find(b"moov") - 8
    # index intact, frame data zeroed past the first 100 bytes: the first frame cannot decode
    (root / "garbled_data.mp4").write_bytes(good[:start] + bytes(end - start) + good[end:])
    _audio_only(root / "audio.mp4")
    (root / "folder.mp4").mkdir()
    return root


@pytest.mark.parametrize(
    "name, code",
    [
        ("missing.mp4", RejectCode.MEDIA_MISSING),
        ("folder.mp4", RejectCode.MEDIA_MISSING),
        ("zero.mp4", RejectCode.MEDIA_EMPTY),
        ("random.mp4", RejectCode.MEDIA_CORRUPT),
        ("text.mp4", RejectCode.MEDIA_CORRUPT),
        ("truncated.mp4", RejectCode.MEDIA_CORRUPT),
        ("truncated_faststart.mp4", RejectCode.MEDIA_CORRUPT),
        ("garbled_data.mp4", RejectCode.MEDIA_CORRUPT),
        ("audio.mp4", RejectCode.NO_FRAMES),
    ],
)
def test_bad_video_gives_its_reject_code(bad, name, code):
    with pytest.raises(SampleError) as caught:
        probe_video(bad / name, name)
    assert caught.value.code == code
    assert name in caught.value.message


def test_the_faststart_copy_itself_is_fine(bad):
    assert probe_video(bad / "faststart.mp4", "faststart.mp4").n_frames == N


@pytest.mark.slow  # probes corrupt files in subprocesses
def test_corrupt_files_never_kill_the_process(media, tmp_path):
    """Fuzzed copies (random blocks, flipped bytes, clobbered NAL sizes) go through probe
    and decode in a child process: it must finish, every file probing fine or failing
    with a SampleError, every decode succeeding or raising DecodeError."""
    good = (media / "clip.mp4").read_bytes()
    start, end = good.find(b"mdat") + 8, good.find(b"moov") - 8
    paths = []
    for seed in range(12):
        rng, data = random.Random(seed), bytearray(good)
        for _ in range(1 + seed % 4):
            at = rng.randrange(start, end - 64)
            if seed % 3 == 0:  # a random block
                size = rng.randrange(4, 64)
                data[at : at + size] = rng.randbytes(size)
            elif seed % 3 == 1:  # flipped bytes
                for _ in range(10):
                    data[rng.randrange(start, end)] ^= 0xFF
            else:  # a clobbered 4-byte length field
                data[at : at + 4] = rng.randbytes(4)
        paths.append(tmp_path / f"fuzz{seed}.mp4")
        paths[-1].write_bytes(bytes(data))
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from stgr_builder.errors import SampleError
        from stgr_builder.video import DecodeError, probe_video, read_frames
        out = []
        for p in sys.argv[1:]:
            try:
                info = probe_video(Path(p), p)
            except SampleError as err:
                out.append(err.code.value); continue
            try:
                read_frames(Path(p), info, range(info.n_frames)); out.append("ok")
            except DecodeError:
                out.append("decode_error")
        print(json.dumps(out))
    """)
    child = subprocess.run(
        [sys.executable, "-c", script, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert child.returncode == 0, child.stderr[-2000:]
    outcomes = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(outcomes) == len(paths)
    assert set(outcomes) <= {"ok", "decode_error", "media_corrupt", "no_frames"}
    assert "decode_error" in outcomes  # corrupt data did reach the decoder, and was caught


# --- images ---------------------------------------------------------------------------


def test_probe_image_reports_original_size_and_rejects_bad_images(tmp_path):
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "full.jpg", quality=90)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    assert probe_image(tmp_path / "ok.png", "ok.png").model_dump() == {"path": "ok.png", "width": 50, "height": 30}
    for name, code in [
        ("cut.jpg", RejectCode.MEDIA_CORRUPT),
        ("empty.png", RejectCode.MEDIA_EMPTY),
        ("none.png", RejectCode.MEDIA_MISSING),
    ]:
        with pytest.raises(SampleError) as caught:
            probe_image(tmp_path / name, name)
        assert caught.value.code == code


# --- the step -------------------------------------------------------------------------


def test_probe_step_opens_a_shared_video_once(media):
    step = ProbeStep()
    out = run_steps([work(media, "clip.mp4", n=k) for k in range(5)] + [work(media, "./clip.mp4", n=9)], [step])
    assert step.videos_opened == 1
    assert all(isinstance(item, SampleWork) and item.video.n_frames == N for item in out)
    assert out[-1].video.path == "./clip.mp4"  # the path as the sample wrote it
    assert (step.stats.seen, step.stats.kept, step.stats.rejected) == (6, 6, {})


def test_probe_step_turns_bad_media_and_spans_into_rejects(media, bad):
    items = [
        work(media, "clip.mp4", span=[0.5, 1.0], n=0),  # kept
        work(media, "clip.mp4", span=[2.5, 3.0 + 0.5 / FPS], n=1),  # end within one frame: kept
        work(media, "clip.mp4", span=[-0.1, 1.0], n=2),
        work(media, "clip.mp4", span=[1.0, 3.2], n=3),
        work(media, "clip.mp4", span=[1.0, 1.0], n=4),
        work(bad, "random.mp4", n=5),
        work(bad, "random.mp4", n=6),
        work(bad, "missing.mp4", n=7),
        work(media, "../media/clip.mp4", n=8),
        work(bad, image="none.png", n=9),
    ]
    step = ProbeStep()
    out = run_steps(items, [step])
    codes = [item.code if isinstance(item, Reject) else "kept" for item in out]
    assert codes == [
        "kept",
        "kept",
        RejectCode.SPAN_OUTSIDE_VIDEO,
        RejectCode.SPAN_OUTSIDE_VIDEO,
        RejectCode.SPAN_OUTSIDE_VIDEO,
        RejectCode.MEDIA_CORRUPT,
        RejectCode.MEDIA_CORRUPT,
        RejectCode.MEDIA_MISSING,
        RejectCode.UNSAFE_PATH,
        RejectCode.MEDIA_MISSING,
    ]
    assert [r.id for r in out[2:]] == [w.sample.id for w in items[2:]]
    assert all(r.stage.value == "probe" for r in out[2:])
    assert step.stats.kept == 2
    assert step.stats.rejected == {"span_outside_video": 3, "media_corrupt": 2, "media_missing": 2, "unsafe_path": 1}
    assert step.videos_opened == 3  # clip, random (probed once for two samples), missing


def test_probe_step_applies_the_paper_filters_per_source(media):
    filters = {
        "STR_test": FilterConfig(min_video_s=10, max_video_s=180),
        "TVG_test": FilterConfig(min_video_s=5, max_video_s=20, max_action_fraction=0.5, max_answer_fraction=0.7),
    }
    items = [
        work(media, "clip.mp4", n=0),  # 3 s < 10 s
        work(media, "clip.mp4", source="unfiltered", n=1),  # no filters
        work(media, "long.mp4", span=[0.0, 5.9], source="TVG_test", n=2),  # 49%: kept
        work(media, "long.mp4", span=[0.0, 6.0], source="TVG_test", n=3),  # 50%: action
        work(media, "long.mp4", span=[0.0, 8.0], source="TVG_test", task=Task.TEMPORAL, n=4),  # 67%: answer, kept
        work(media, "long.mp4", span=[0.0, 8.4], source="TVG_test", task=Task.TEMPORAL_MCQ, n=5),  # 70%: answer
        work(media, "long.mp4", span=[0.0, 8.4], source="TVG_test", n=6),  # not temporal: action
        work(media, "long.mp4", source="STR_test", n=7),  # 12 s: kept
    ]
    step = ProbeStep(filters)
    out = run_steps(items, [step])
    codes = [item.code if isinstance(item, Reject) else "kept" for item in out]
    assert codes == [
        RejectCode.FILTERED_DURATION,
        "kept",
        "kept",
        RejectCode.FILTERED_ACTION_FRACTION,
        "kept",
        RejectCode.FILTERED_ANSWER_FRACTION,
        RejectCode.FILTERED_ACTION_FRACTION,
        "kept",
    ]
    assert "shorter than 10" in out[0].message
    off = ProbeStep(
        {
            "TVG_test": FilterConfig(
                min_video_s=None, max_video_s=None, max_action_fraction=None, max_answer_fraction=None
            )
        }
    )
    assert all(isinstance(item, SampleWork) for item in run_steps(items[2:7], [off]))


def test_probe_step_sets_image_info(tmp_path):
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "pic.png")
    (out,) = run_steps([work(tmp_path, image="pic.png")], [ProbeStep()])
    assert (out.image.width, out.image.height, out.video) == (60, 40, None)
