"""The dataset on object storage keeps every promise it keeps on disk: a build with ``--out
s3://...`` writes the local build's bytes, which ``stgr audit`` reads back from the bucket; a
build killed mid-way resumes from the bucket alone to the same bytes, leaving nothing
uncommitted; two builds racing for one prefix: one refuses; a store answering 503 SlowDown and
dropping a connection mid-upload is retried, and nothing partial is committed.

Everything goes over real HTTP to moto's S3 server on 127.0.0.1 (``helpers/s3.py``), with the
credentials and the endpoint in the environment only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from stgr_builder.cli import app
from stgr_builder.core.resources import Resources
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import StgrError
from stgr_builder.executor import run
from stgr_builder.flows.build import flow_runner
from stgr_builder.pipeline import build, build_job
from stgr_builder.reannotate import reannotate
from stgr_builder.storage import Lease, open_dataset, remote_output

from helpers.s3_faults import Fault, FaultProxy
from helpers.small_demo import small_source, write_config

pytestmark = pytest.mark.slow

DATASET_FOLDERS = ("stgr_cot", "stgr_rl", "rejects")
#: A build in a subprocess to kill (the library call: the CLI's Prefect server takes longer to start).
BUILD_SCRIPT = (
    "import sys; from pathlib import Path; from stgr_builder.pipeline import build; "
    "build(Path(sys.argv[1]), sys.argv[2])"
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(config, local build) of the small demo in six shards: what every bucket build must equal."""
    config = write_config(small_source(tmp_path_factory), "bucket", sharding={"samples_per_shard": 4, "workers": 1})
    out = tmp_path_factory.mktemp("bucket-reference") / "out"
    build(config, out)
    return config, out


def local_digests(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def bucket_digests(s3, key: str) -> dict[str, str]:
    """sha256 of every shard object under the prefix (whatever a manifest says)."""
    fs, root = s3.fs, f"{s3.bucket}/{key}"
    return {
        path[len(root) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest()
        for folder in DATASET_FOLDERS
        for path in fs.find(f"{root}/{folder}")
    }


def assert_committed_exactly(s3, key: str, reference: Path) -> None:
    """The bucket holds the reference's shard bytes, each named by the manifest, nothing more:
    no shard object without a record, no intent, no lease."""
    assert bucket_digests(s3, key) == local_digests(reference)
    manifest = json.loads(s3.fs.cat_file(f"{s3.bucket}/{key}/manifest.json"))
    assert {f["path"]: f["sha256"] for f in manifest["shards"]} == local_digests(reference)
    names = [path.split(f"{key}/", 1)[1] for path in s3.fs.find(f"{s3.bucket}/{key}")]
    records = sorted(n for n in names if n.startswith("_progress/shard-"))
    assert len(records) == len({p.split("/")[1] for p in local_digests(reference)})
    assert not [n for n in names if n.startswith(("_progress/writing-", ".stgr-lock")) or n.endswith(".tmp")]


def test_a_bucket_build_writes_the_local_bytes_and_audit_reads_them(s3, reference):
    config, local = reference
    runner = CliRunner()
    built = runner.invoke(app, ["build", str(config), "--out", s3.url("ds")], catch_exceptions=False)
    assert built.exit_code == 0 and f"built {s3.url('ds')}" in built.output, built.output
    assert_committed_exactly(s3, "ds", local)
    counts = json.loads((local / "manifest.json").read_text())["counts"]
    assert json.loads(s3.fs.cat_file(f"{s3.bucket}/ds/manifest.json"))["counts"] == counts

    # A shard object that is not the one the manifest names (a writer replacing it) is never read.
    shard = f"{s3.bucket}/ds/stgr_cot/part-00001.parquet"
    committed = s3.fs.cat_file(shard)
    s3.fs.pipe_file(shard, s3.fs.cat_file(f"{s3.bucket}/ds/stgr_cot/part-00002.parquet"))
    with pytest.raises(StgrError, match="kept changing while it was read"):
        open_dataset(s3.url("ds"))
    s3.fs.pipe_file(shard, committed)

    from_bucket = runner.invoke(app, ["audit", s3.url("ds"), "--brief"], catch_exceptions=False)
    from_disk = runner.invoke(app, ["audit", str(local), "--brief"], catch_exceptions=False)
    assert from_bucket.exit_code == 0, from_bucket.output
    tables = lambda text: text.split("Every table")[0]  # noqa: E731 (the last line names the dataset)
    assert tables(from_bucket.output) == tables(from_disk.output)
    assert "│ cot     │ temporal QA " in from_bucket.output and "Checks: all 9 pass" in from_bucket.output
    verified = runner.invoke(app, ["verify", s3.url("ds")], catch_exceptions=False)
    assert verified.exit_code == 0 and "matches its manifest" in verified.output


def test_a_killed_build_resumes_from_the_bucket_alone_to_the_same_bytes(s3, reference, tmp_path, monkeypatch):
    """SIGKILL of a build subprocess once a shard is committed; a successor with a fresh staging
    copy (as on another machine) takes over the lease the dead process left and ends with the
    reference's bytes and nothing uncommitted."""
    config, local = reference
    command = [sys.executable, "-c", BUILD_SCRIPT, str(config), s3.url("ds")]
    proc = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if s3.fs.glob(f"{s3.bucket}/ds/_progress/shard-*.json"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    records = sorted(s3.fs.glob(f"{s3.bucket}/ds/_progress/shard-*.json"))
    assert 1 <= len(records) < len(local_digests(local)) // 3
    assert s3.fs.glob(f"{s3.bucket}/ds/.stgr-lock/*")  # the dead build's lease, never released
    # What a kill between a shard's files and its record leaves: files no record names.
    s3.fs.rm_file(records[0])

    monkeypatch.setenv("STGR_CACHE_DIR", str(tmp_path / "other-copy"))
    build(config, s3.url("ds"))
    assert_committed_exactly(s3, "ds", local)


def test_a_build_stopped_by_sigterm_frees_its_prefix_at_once(s3, reference):
    """`stgr build --out s3://...` stopped by SIGTERM exits 143 and removes its lease, so a
    successor on any machine starts at once (not after the lease expires)."""
    config, _ = reference
    command = [sys.executable, "-m", "stgr_builder.cli", "build", str(config), "--out", s3.url("ds")]
    proc = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not s3.fs.glob(f"{s3.bucket}/ds/.stgr-lock/*"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err.decode(), err.decode()[-2000:]
    assert not s3.fs.glob(f"{s3.bucket}/ds/.stgr-lock/*")


def test_two_builds_racing_for_one_prefix_one_refuses(s3, reference):
    config, local = reference
    # The lease itself: of builds creating it at the same instant, exactly one holds it.
    barrier, outcomes = threading.Barrier(4), []

    def take() -> None:
        barrier.wait()
        try:
            outcomes.append(Lease(s3.url("race-lease")).acquire())
        except StgrError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [o for o in outcomes if isinstance(o, Lease)]
    assert len(held) == 1 and all("is being built by pid" in o for o in outcomes if isinstance(o, str))
    held[0].release()

    # A holder on another machine that stopped renewing keeps the prefix until its lease expires.
    crashed = {"owner": "elsewhere", "pid": 1, "host": "node-7", "machine": "other", "started": "-"}
    lease_object = f"{s3.bucket}/crashed/.stgr-lock/0000000000.json"
    s3.fs.pipe_file(lease_object, json.dumps({**crashed, "expires": time.time() + 600}).encode())
    with pytest.raises(StgrError, match=r"is being built by pid 1 on node-7 .* lease until"):
        Lease(s3.url("crashed")).acquire()
    # Its lease runs out (written as already past, so a slow machine cannot outlive it mid-test).
    s3.fs.pipe_file(lease_object, json.dumps({**crashed, "expires": time.time() - 1}).encode())
    successor = Lease(s3.url("crashed")).acquire()
    assert successor.generation == 1 and s3.fs.ls(f"{s3.bucket}/crashed/.stgr-lock") == [
        f"{s3.bucket}/crashed/.stgr-lock/0000000001.json"
    ]
    successor.release()

    # A prefix holding what no build made is refused, as a folder is, and left as it was.
    s3.fs.pipe_file(f"{s3.bucket}/foreign/notes.txt", b"mine")
    with pytest.raises(StgrError, match=rf"{s3.url('foreign')} holds files a stgr build did not make \(notes.txt\)"):
        build(config, s3.url("foreign"))
    assert s3.fs.find(f"{s3.bucket}/foreign") == [f"{s3.bucket}/foreign/notes.txt"]

    # Two whole builds: the second refuses at once and writes nothing; the first is unharmed.
    errors: list[BaseException] = []
    first = threading.Thread(target=lambda: _catching(errors, build, config, s3.url("ds")))
    first.start()
    while not s3.fs.glob(f"{s3.bucket}/ds/.stgr-lock/*"):
        time.sleep(0.01)
    with pytest.raises(StgrError, match=r"is being built by pid \d+"):
        build(config, s3.url("ds"))
    first.join()
    assert not errors
    assert_committed_exactly(s3, "ds", local)


def _catching(errors: list[BaseException], call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 (reported by the test)
        errors.append(exc)


def test_slowdowns_and_dropped_uploads_are_retried_and_nothing_partial_is_committed(s3, reference, monkeypatch):
    config, local = reference
    faults = [
        Fault("PUT", "/stgr_cot/part-", "slowdown", times=2),
        Fault("PUT", "/stgr_rl/part-", "drop", times=2),
        Fault("PUT", "/_progress/shard-", "slowdown", times=1),
        Fault("PUT", "/manifest.json", "drop", times=1),
    ]
    with FaultProxy(s3.endpoint, faults) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        build(config, s3.url("ds"))
    assert proxy.injected == {"slowdown": 3, "drop": 3}
    assert_committed_exactly(s3, "ds", local)


def test_dask_workers_sharing_only_the_bucket_build_the_same_rows(s3, reference, monkeypatch, tmp_path_factory):
    """Two Dask worker processes, each on its own temporary copy pulled from the bucket: the
    bucket ends with the thread runner's bytes, and the command's own copy never held a shard
    (every row reached the bucket from a worker's copy)."""
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")
    _, local = reference
    sharding = {"samples_per_shard": 4, "workers": 2}
    config = write_config(small_source(tmp_path_factory), "bucket-dask", sharding=sharding)
    resources = Resources()
    with remote_output(s3.url("ds")) as remote:
        job = build_job(config, remote.local, resources, sharding_runner="dask")
        manifest = run(remote.job(job, isolated=True), flow_runner, resources)
        assert not list((remote.local / "stgr_cot").glob("part-*.parquet"))
    assert manifest.complete
    assert_committed_exactly(s3, "ds", local)


@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_with_everything_in_the_bucket_worker_processes_write_the_local_bytes(
    s3, reference, runner, monkeypatch, tmp_path_factory
):
    """The issue's whole case: the annotation file, the media, the dataset and its cache in the
    bucket, built by `stgr build --out s3://...` on two worker processes (a Dask LocalCluster, a
    local Ray), each with its own copies: the bucket ends with the local thread build's bytes."""
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")
    _, local = reference
    source = small_source(tmp_path_factory)
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix != ".yaml"):
        s3.fs.put_file(str(path), f"{s3.bucket}/src/{path.relative_to(source).as_posix()}")
    config = yaml.safe_load(write_config(source, f"everything-{runner}").read_text())
    (only,) = config["sources"]
    only.update(path=s3.url(f"src/{Path(only['path']).name}"), media_root=s3.url("src/media"))
    config["sharding"].update(samples_per_shard=4, workers=2, runner=runner)
    config["cache"] = {"local_dir": str(tmp_path_factory.mktemp("media-cache"))}
    path = tmp_path_factory.mktemp("everything") / "CONFIG.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["build", str(path), "--out", s3.url("ds")])
    assert result.exit_code == 0, result.output
    assert_committed_exactly(s3, "ds", local)


def test_a_reannotation_from_the_bucket_into_the_bucket_writes_the_local_bytes(s3, reference, tmp_path, monkeypatch):
    """`stgr reannotate s3://.../ds --out s3://.../ds-v2` writes what the same re-annotation of
    the local build writes, and its manifest names the parent by its URL."""
    config, local = reference
    build(config, s3.url("ds"))
    where = "id IN (SELECT id FROM cot ORDER BY hash(id) LIMIT 3)"
    options = {"where": where, "prompt": "stgr-cot-llm", "model": "stgr-dry-run"}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-bucket-0123456789")
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        _, on_disk = reannotate(local, out=tmp_path / "v2", **options)
        result = CliRunner().invoke(app, ["reannotate", s3.url("ds"), "--out", s3.url("ds-v2"), *_flags(options)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich folds long lines
    assert f"re-annotated 3 rows of {s3.url('ds')} into {s3.url('ds-v2')}" in printed and "Rows changed" in printed
    assert on_disk.reannotation is not None and on_disk.reannotation.selected == 3
    assert_committed_exactly(s3, "ds-v2", tmp_path / "v2")
    manifest = json.loads(s3.fs.cat_file(f"{s3.bucket}/ds-v2/manifest.json"))
    assert manifest["parent"]["path"] == s3.url("ds") and manifest["build_id"] == on_disk.build_id


def _flags(options: dict[str, str]) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key}", value)]


def test_a_store_without_credentials_says_so_in_one_line(s3, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait on an instance role's endpoint
    with pytest.raises(StgrError, match=rf"^{s3.url('ds')}: no credentials found: set them in the environment"):
        open_dataset(s3.url("ds"))


def test_a_dask_worker_killed_mid_shard_is_replaced_and_its_shard_lands_once(s3, monkeypatch, tmp_path_factory):
    """Worker processes (and what they started) SIGKILLed inside their shards, once the LLM
    server has answered some of their requests, as machines lost mid-shard: Dask's nanny starts
    others, the shard tasks run again from the bucket, and the bucket ends with the bytes of an
    uninterrupted local build, each shard committed once."""
    runner = "dask"
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "error")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dry-run")
    llm = {"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "judge": {"enabled": False}}
    source = small_source(tmp_path_factory)
    config = write_config(
        source, "worker-kill", annotator={**llm, "concurrency": 2}, sharding={"samples_per_shard": 4, "workers": 2}
    )
    local = tmp_path_factory.mktemp("worker-kill") / "local"
    with serve_llm(latency_ms=150) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(config, local)
        before = server.stats()["total"]
        resources, errors = Resources(), []
        with remote_output(s3.url("ds")) as remote:
            job = build_job(config, remote.local, resources, sharding_runner=runner)
            thread = threading.Thread(
                target=_catching, args=(errors, run, remote.job(job, isolated=True), flow_runner, resources)
            )
            thread.start()
            port = urlsplit(server.base_url).port
            victims = _once_asked_beyond(server, before, thread.is_alive, lambda: _connected_to(port), 120)
            if not victims:
                raise AssertionError(
                    f"no worker was seen inside a shard before the build ended ({errors or 'no error'}; the "
                    f"server was asked {server.stats()['total'] - before} requests)"
                )
            for victim in victims:
                with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just ended its shard
                    _kill([*victim.children(recursive=True), victim])
            thread.join(timeout=300)
        asked = server.stats()["total"] - before
    assert not thread.is_alive() and not errors, errors
    assert_committed_exactly(s3, "ds", local)
    # the killed shard's requests were asked again: it was inside the shard, and ran again
    assert asked > before, (asked, before)


def test_a_ray_worker_killed_mid_shard_is_replaced_and_its_shard_lands_once(s3, monkeypatch, tmp_path_factory):
    """The same on Ray: the build runs as `stgr build` in a process of its own (started from a
    test's thread, the isolated Ray build hung or asked nothing: see issue 26), its Ray workers are
    SIGKILLed inside their shards once the LLM server has answered some of their requests, Ray
    runs the shard tasks again, and the bucket ends with an uninterrupted local build's bytes."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dry-run")
    llm = {"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "judge": {"enabled": False}}
    source = small_source(tmp_path_factory)
    sharding = {"samples_per_shard": 4, "workers": 2, "runner": "ray"}
    config = write_config(source, "ray-worker-kill", annotator={**llm, "concurrency": 2}, sharding=sharding)
    local = tmp_path_factory.mktemp("ray-worker-kill") / "local"
    with serve_llm(latency_ms=150) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(config, local, sharding_runner="thread")
        before = server.stats()["total"]
        command = [sys.executable, "-m", "stgr_builder.cli", "build", str(config), "--out", s3.url("ds")]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        workers = _once_asked_beyond(
            server, before, lambda: process.poll() is None, lambda: _shard_workers(process), 180
        )
        killed = _kill(workers)
        _, stderr = process.communicate(timeout=300)
        asked = server.stats()["total"] - before
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert killed, "no Ray worker was seen inside a shard"
    assert_committed_exactly(s3, "ds", local)
    assert asked > before, (asked, before)  # the killed shards' requests were asked again


def _once_asked_beyond(server, before: int, running, find, timeout: float) -> list:
    """What ``find()`` first returns non-empty once the LLM server has been asked more than
    ``before`` requests (the build's own: a shard is inside its requests); [] if ``running()``
    turned false or ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        if server.stats()["total"] > before:
            with contextlib.suppress(psutil.NoSuchProcess):  # a process that ended while we looked
                if found := find():
                    return found
        time.sleep(0.01)
    return []


def _connected_to(port: int | None) -> list[psutil.Process]:
    """The processes but this one with a connection open to ``port`` (the test's own LLM server:
    only the build's workers talk to it)."""
    pids = {c.pid for c in psutil.net_connections("tcp") if c.raddr and c.raddr.port == port}
    return [psutil.Process(pid) for pid in pids - {None, os.getpid()}]


def _shard_workers(build: subprocess.Popen) -> list[psutil.Process]:
    """The build's Ray workers running a shard task (Ray titles them ``ray::shard``)."""
    children = psutil.Process(build.pid).children(recursive=True)
    return [p for p in children if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::shard")]


def _kill(processes: list[psutil.Process]) -> int:
    """SIGKILL each of ``processes`` still alive; how many there were."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return len(processes)


def _object_gets(proxy: FaultProxy, key: str) -> list[str]:
    """The objects (relative to the prefix ``key``) that GET requests through ``proxy`` asked for."""
    gets = []
    for method, path, _ in proxy.requests:
        parts = urlsplit(path)
        name = parts.path.split(f"/{key}/", 1)
        if method == "GET" and "list-type" not in parts.query and len(name) == 2:
            gets.append(name[1])
    return gets


def _whole_listings(proxy: FaultProxy, key: str) -> list[str]:
    """LIST requests of the whole prefix, recursively (no delimiter: ``fs.find`` of it), which a
    scoped pull never sends."""
    whole = []
    for method, path, _ in proxy.requests:
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        recursive = not query.get("delimiter", [""])[0]
        if method == "GET" and "list-type" in query and query.get("prefix") == [f"{key}/"] and recursive:
            whole.append(path)
    return whole


def test_an_isolated_resume_reads_only_its_shards_stage_entries_frames_and_replies(s3, monkeypatch, tmp_path_factory):
    """An LLM build into the bucket loses its manifest, one shard's record (a kill between the
    shard's files and its record) and every stored annotate result; Dask workers sharing only the
    bucket resume it: the shard reuses its stored probe, sample and detect results and its LLM
    replies (no new request), writes the same bytes, and the workers download only that shard's
    stage entries, key frames and replies, never a listing of the whole prefix."""
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-scoped-0123456789")
    source = small_source(tmp_path_factory)
    annotator = {"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "timeout": 2.0}
    annotator |= {"max_retries": 1, "judge": {"enabled": False}}
    sharding = {"samples_per_shard": 4, "workers": 2}
    config = write_config(source, "bucket-scoped", sharding=sharding, annotator=annotator)
    root = f"{s3.bucket}/ds"
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(config, s3.url("ds"))
        built = bucket_digests(s3, "ds")
        records = sorted(s3.fs.glob(f"{root}/_progress/shard-*.json"))
        shard = max((json.loads(s3.fs.cat_file(r)) for r in records), key=lambda r: len(r["sample_ids"]))
        s3.fs.rm_file(f"{root}/_progress/shard-{shard['shard']:05d}.json")
        s3.fs.rm_file(f"{root}/manifest.json")
        s3.fs.rm(s3.fs.find(f"{root}/_cache/stages/annotate"))
        every = [p[len(root) + 1 :] for p in s3.fs.find(root)]
        requests = server.stats()["total"]

        resources = Resources()
        with remote_output(s3.url("ds")) as remote, FaultProxy(s3.endpoint) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the workers' way to the bucket
            job = build_job(config, remote.local, resources, sharding_runner="dask")
            manifest = run(remote.job(job, isolated=True), flow_runner, resources)
        assert server.stats()["total"] == requests  # every reply came from the bucket's cache

    assert manifest.complete and bucket_digests(s3, "ds") == built
    record = json.loads(s3.fs.cat_file(f"{root}/_progress/shard-{shard['shard']:05d}.json"))
    stats = {step["step"]: step for step in record["stats"]}
    assert all(stats[s]["seen"] == stats[s]["resumed"] > 0 for s in ("probe", "sample", "detect")), stats
    assert record["llm"]["requests"] == record["llm"]["cached"] > 0

    got = _object_gets(proxy, "ds")
    entries = [rel for rel in got if rel.startswith("_cache/stages/")]
    frames = {rel for rel in got if rel.startswith("kfs/")}
    replies = {rel for rel in got if rel.startswith("_cache/llm/") and "/formats/" not in rel}
    stored = [rel for rel in every if rel.startswith("_cache/stages/")]
    # this shard's probe, sample and detect entries (one each per sample), the annotate ones missed
    assert len(entries) <= 4 * len(shard["sample_ids"]) < len(stored)
    named = {
        frame["path"]
        for rel in entries
        if rel.startswith("_cache/stages/sample/")
        for name in ("frames", "track_frames", "span_frames")
        for frame in json.loads(s3.fs.cat_file(f"{root}/{rel}")).get("work", {}).get(name, [])
    }
    assert frames and frames <= named < {rel for rel in every if rel.startswith("kfs/")}
    cached = {rel for rel in every if rel.startswith("_cache/llm/") and "/formats/" not in rel}
    assert replies and replies <= cached and len(replies) <= record["llm"]["requests"] < len(cached)
    assert not _whole_listings(proxy, "ds")
