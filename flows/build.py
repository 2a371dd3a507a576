"""The build as a Prefect flow: one task for the plan, one task per shard, one to finalize.

Thin by design: every task calls one function of ``stgr_builder.pipeline``; the task runner
(threads here, Dask or Ray by swapping it) decides where shards run.

    python -m flows.build CONFIG.yaml outputs/run1
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from stgr_builder import pipeline
from stgr_builder.models import BuildPlan, Manifest, ShardPlan, ShardResult

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


def run_build(config_path: Path, out: Path) -> Manifest:
    """Run the flow on the thread runner with the config's bounded worker count."""
    ctx = pipeline.context(config_path, out)  # a bad config fails here, before the flow starts
    runner = ThreadPoolTaskRunner(max_workers=ctx.config.sharding.workers)
    return build_flow.with_options(task_runner=runner)(ctx)


if __name__ == "__main__":
    run_build(Path(sys.argv[1]), Path(sys.argv[2]))
