"""The build flow on a local Ray (prefect-ray's RayTaskRunner) writes the same rows as on the
thread runner; a build killed mid-way (SIGKILL of the CLI) resumes on Ray to the same rows, and
no Ray process outlives the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from stgr_builder.flows.build import flow_runner, task_runner
from stgr_builder.models import ShardingConfig
from stgr_builder.pipeline import build

from helpers.small_demo import small_build, small_source, write_config

pytestmark = pytest.mark.slow


def _digests(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def _carrying(mark: str) -> list[int]:
    """Pids of the live processes whose environment holds ``STGR_TEST_MARK=mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"STGR_TEST_MARK={mark}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def test_the_config_picks_the_ray_runner():
    from prefect_ray import RayTaskRunner

    local = task_runner(ShardingConfig(runner="ray", workers=3))
    assert isinstance(local, RayTaskRunner) and local.address is None
    assert local.init_kwargs["num_cpus"] == 3 and local.init_kwargs["include_dashboard"] is False
    # Ray's workers report to this command's Prefect server (not one each of their own).
    assert local.init_kwargs["runtime_env"]["env_vars"]["PREFECT_API_URL"].startswith("http://127.0.0.1:")
    remote = task_runner(ShardingConfig(runner="ray", ray_address="ray://10.0.0.1:10001"))
    assert remote.address == "ray://10.0.0.1:10001" and "num_cpus" not in remote.init_kwargs


def test_a_ray_worker_keeps_one_resources_per_build():
    """Tasks of one build on one Ray worker process get the same ``Resources`` (models load once
    per worker, as on Dask); another build's token gets its own."""
    import ray

    from stgr_builder.core.resources import Resources

    @ray.remote
    def remembered(resources: Resources, put: bool) -> int | None:
        memo = resources.memo("test")
        if put:
            memo.put("pid", os.getpid())
        return memo.get("pid")

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=80 << 20)
    try:
        one, other = Resources(), Resources()
        first = ray.get(remembered.remote(one, True))
        again, new = ray.get([remembered.remote(one, False), remembered.remote(other, False)])
    finally:
        ray.shutdown()
    assert first is not None and again == first  # the second task saw what the first kept
    assert new is None


def test_a_local_ray_build_writes_the_thread_runner_rows(tmp_path_factory, tmp_path):
    import ray

    source = small_source(tmp_path_factory)
    config = write_config(source, "ray", sharding={"samples_per_shard": 8, "workers": 2})
    threads = build(config, tmp_path / "threads", runner=flow_runner)
    on_ray = build(config, tmp_path / "ray", runner=flow_runner, sharding_runner="ray")
    assert len(threads.shards) >= 6  # several shard tasks, spread over Ray's two CPUs
    assert _digests(tmp_path / "ray") == _digests(tmp_path / "threads")
    assert on_ray.counts == threads.counts and on_ray.build_id == threads.build_id
    assert not ray.is_initialized()  # the runner stopped the Ray it started


def test_a_killed_ray_build_resumes_to_the_same_rows(tmp_path_factory, tmp_path):
    # The session's small build (thread runner, in process) has the rows every runner must give;
    # the runner and its workers are pacing settings, outside the build id.
    _, reference = small_build(tmp_path_factory)
    config = write_config(small_source(tmp_path_factory), "ray-kill", sharding={"workers": 2, "runner": "ray"})
    out, mark = tmp_path / "killed", uuid.uuid4().hex
    env = {**os.environ, "STGR_TEST_MARK": mark, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "stgr_builder.cli", "build", str(config), "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Killed once Ray's workers have stored results of a few samples, before the shards are done.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if sum(1 for _ in (out / "_cache" / "stages" / "detect").glob("*/*.json")) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()
    _gone(mark)  # the command's reaper stops Ray's processes (raylet, GCS, workers)
    rerun = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert _digests(out) == _digests(reference)
    _gone(mark)


def _gone(mark: str, wait_s: float = 30.0) -> None:
    deadline = time.monotonic() + wait_s
    while (left := _carrying(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in left if Path(f"/proc/{pid}").exists()]
