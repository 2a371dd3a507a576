"""The build flow on a 2-worker Dask LocalCluster (prefect-dask) writes the same rows as on
the thread runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stgr_builder.flows.build import flow_runner, task_runner
from stgr_builder.models import ShardingConfig
from stgr_builder.pipeline import build

from helpers.small_demo import small_source, write_config

pytestmark = pytest.mark.slow


def _digests(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def test_the_config_picks_the_runner():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner(ShardingConfig(workers=3)), ThreadPoolTaskRunner)
    remote = task_runner(ShardingConfig(runner="dask", dask_address="tcp://10.0.0.1:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.1:8786"
    local = task_runner(ShardingConfig(runner="dask", workers=2))
    assert local.address is None and local.cluster_kwargs["n_workers"] == 2


def test_a_local_cluster_build_writes_the_thread_runner_rows(tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")
    source = small_source(tmp_path_factory)
    config = write_config(source, "dask", sharding={"samples_per_shard": 8, "workers": 2})
    threads = build(config, tmp_path / "threads", runner=flow_runner)
    dask = build(config, tmp_path / "dask", runner=flow_runner, sharding_runner="dask")
    assert len(threads.shards) >= 6  # several shard tasks, spread over the two workers
    assert _digests(tmp_path / "dask") == _digests(tmp_path / "threads")
    assert dask.counts == threads.counts and dask.build_id == threads.build_id
