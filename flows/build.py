"""The build as a Prefect flow: one task for the plan, one task per shard, one to finalize.

Thin by design: every task calls one function of ``stgr_builder.pipeline``; the task runner
decides where shards run: ``sharding.runner: thread`` (a bounded pool in this process) or
``dask`` (prefect-dask's ``DaskTaskRunner``: the cluster at ``sharding.dask_address``, or a
LocalCluster of ``sharding.workers`` processes). Both write the same rows.

    python -m flows.build CONFIG.yaml outputs/run1
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from stgr_builder import pipeline
from stgr_builder.errors import StgrError
from stgr_builder.models import BuildPlan, Manifest, ShardingConfig, ShardPlan, ShardResult

# Inputs are whole shards of samples: hashing them for a cache key would cost more than the
# work it saves, and resume is handled by the shard files themselves.
plan_task = task(pipeline.plan, name="plan", cache_policy=NO_CACHE)
finalize_task = task(pipeline.finalize, name="finalize", cache_policy=NO_CACHE)


@task(name="shard", cache_policy=NO_CACHE, task_run_name="shard-{shard.shard:05d}")
def shard_task(ctx: pipeline.BuildContext, shard: ShardPlan) -> ShardResult:
    return pipeline.run_shard(ctx, shard)


@flow(name="stgr-build", log_prints=False)
def build_flow(ctx: pipeline.BuildContext) -> Manifest:
    build_plan: BuildPlan = plan_task(ctx)
    futures = [shard_task.submit(ctx, shard) for shard in build_plan.shards]
    results = [future.result() for future in futures]
    return finalize_task(ctx, build_plan, results)


def task_runner(sharding: ShardingConfig):
    """The task runner the config names.

    >>> task_runner(ShardingConfig(workers=4))  # doctest: +ELLIPSIS
    <prefect.task_runners.ThreadPoolTaskRunner object at ...>
    """
    if sharding.runner == "thread":
        return ThreadPoolTaskRunner(max_workers=sharding.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a dependency
        raise StgrError("sharding.runner: dask needs prefect-dask (pip install prefect-dask)") from exc
    if sharding.dask_address:
        return DaskTaskRunner(address=sharding.dask_address)
    # One thread per worker process: a shard task already uses the cores it gets (decoding,
    # detection), and the LLM annotator runs its own event loop inside the task.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": sharding.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def run_build(config_path: Path, out: Path, runner: str | None = None) -> Manifest:
    """Run the flow on the runner the config names (``runner`` overrides ``sharding.runner``)."""
    ctx = pipeline.context(config_path, out)  # a bad config fails here, before the flow starts
    if runner is not None:
        sharding = ctx.config.sharding.model_copy(update={"runner": runner})
        ctx = replace(ctx, config=ctx.config.model_copy(update={"sharding": sharding}))
    return build_flow.with_options(task_runner=task_runner(ctx.config.sharding))(ctx)


if __name__ == "__main__":
    run_build(Path(sys.argv[1]), Path(sys.argv[2]))
