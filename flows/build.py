"""The build and the re-annotation as Prefect flows: one task for the plan, one task per
shard, one to finalize.

Thin by design: ``flow_runner`` is a runner of ``executor.run`` (the one entry), and each task
calls one method of a job of the shard executor (``stgr_builder/executor.py``):
``pipeline.BuildJob`` for ``stgr build``, ``reannotate.ReannotateJob`` for ``stgr reannotate``.
The task runner decides where shards run: ``sharding.runner: thread`` (a bounded pool in this
process), ``dask`` (prefect-dask's ``DaskTaskRunner``: the cluster at ``sharding.dask_address``,
or a LocalCluster of ``sharding.workers`` processes) or ``ray`` (prefect-ray's ``RayTaskRunner``:
the cluster at ``sharding.ray_address``, or a Ray of ``sharding.workers`` CPUs started here and
stopped with the flow). All write the same rows.

``executor.run`` makes one ``Resources`` (loaded models with their locks, bounded memos, the run's LLM
budget) and hands it to every shard task: threads share it; each Dask worker process gets its
own for the build (``core/resources.py``).

    python -m stgr_builder.flows.build CONFIG.yaml outputs/run1
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Generic, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from stgr_builder import pipeline
from stgr_builder.core.resources import Resources
from stgr_builder.errors import StgrError
from stgr_builder.executor import Job
from stgr_builder.models import BuildPlan, Manifest, ShardingConfig, ShardPlan, ShardResult

# Inputs are whole shards of samples: hashing them for a cache key would cost more than the
# work it saves, and resume is handled by the shard files themselves.

T = TypeVar("T")


class Unwalked(Generic[T]):
    """A task parameter that Prefect hands over as it is. Prefect walks every list, dict,
    dataclass and pydantic model of a parameter, twice per task, looking for upstream futures
    (there are none): for a plan of 100,000 rejects that cost more than the build's own work on
    them (issue 21, bad records at scale). Prefect's ``quote`` does the same, but it is a
    tuple, which Dask unpacks into a plain one on the way to a worker."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(job: Unwalked[Job]) -> BuildPlan:
    return job.value.plan()


@task(name="shard", cache_policy=NO_CACHE, task_run_name="shard-{shard.value.shard:05d}")
def shard_task(job: Unwalked[Job], shard: Unwalked[ShardPlan], resources: Resources) -> ShardResult:
    return job.value.run_shard(shard.value, resources)


@task(name="finalize", cache_policy=NO_CACHE)
def finalize_task(
    job: Unwalked[Job], build_plan: Unwalked[BuildPlan], results: Unwalked[list[ShardResult]], resources: Resources
) -> Manifest:
    return job.value.finalize(build_plan.value, results.value, resources)


# validate_parameters=False: the job and the resources are plain Python objects, not pydantic input.
@flow(name="stgr-build", log_prints=False, validate_parameters=False)
def build_flow(job: Job, resources: Resources) -> Manifest:
    unwalked = Unwalked(job)  # a re-annotation's job holds its selected samples
    build_plan = plan_task(unwalked)
    futures = [shard_task.submit(unwalked, Unwalked(shard), resources) for shard in build_plan.shards]
    results = [future.result() for future in futures]
    return finalize_task(unwalked, Unwalked(build_plan), Unwalked(results), resources)


def task_runner(sharding: ShardingConfig):
    """The task runner the config names.

    >>> task_runner(ShardingConfig(workers=4))  # doctest: +ELLIPSIS
    <prefect.task_runners.ThreadPoolTaskRunner object at ...>
    """
    if sharding.runner == "thread":
        return ThreadPoolTaskRunner(max_workers=sharding.workers)
    if sharding.runner == "ray":
        return ray_task_runner(sharding)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise StgrError("sharding.runner: dask needs the dask extra: pip install 'stgr-builder[dask]'") from exc
    if sharding.dask_address:
        return DaskTaskRunner(address=sharding.dask_address)
    # One thread per worker process: a shard task already uses the cores it gets (decoding,
    # detection), and the LLM annotator runs its own event loop inside the task. The workers
    # report to this command's Prefect server (``env``: the nanny's environment for its
    # worker); without it each started a temporary server of its own, as Ray's workers did.
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": sharding.workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": prefect_api_url()},
        },
    )


#: What a local Ray (``sharding.runner: ray`` without ``ray_address``) is started with: no
#: dashboard (an HTTP server and its agents), workers' output kept out of the build's terminal
#: (rich draws the progress there), no usage statistics sent, a small object store (shard
#: tasks pass a plan and a result of a few MB, not frames).
RAY_LOCAL_INIT: dict = {
    "include_dashboard": False,
    "log_to_driver": False,
    "configure_logging": False,
    "object_store_memory": 128 << 20,
}


def ray_task_runner(sharding: ShardingConfig):
    """prefect-ray's ``RayTaskRunner``: the cluster at ``sharding.ray_address``, or a Ray started
    on this machine with ``sharding.workers`` CPUs (each shard task takes one, so at most that
    many run at once) and stopped when the flow ends."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise StgrError("sharding.runner: ray needs the ray extra: pip install 'stgr-builder[ray]'") from exc
    # Ray reads this when it starts (usage statistics are otherwise sent to anyscale.com).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env = {"env_vars": {"PREFECT_API_URL": prefect_api_url()}}
    if sharding.ray_address:
        return RayTaskRunner(
            address=sharding.ray_address, init_kwargs={"log_to_driver": False, "runtime_env": runtime_env}
        )
    return RayTaskRunner(init_kwargs={**RAY_LOCAL_INIT, "num_cpus": sharding.workers, "runtime_env": runtime_env})


def prefect_api_url() -> str:
    """The Prefect API this command reports to: ``PREFECT_API_URL``, or the temporary server
    Prefect runs inside the command (started here). A Ray worker is told it: without it each
    worker process started a temporary server of its own (a database each; on a loaded machine
    they timed out starting). A cluster's workers must reach it: on a Ray cluster
    (``sharding.ray_address``) set ``PREFECT_API_URL`` to a server they reach."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if api:
        return api
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one instance this process's Prefect client uses
    server.start()
    return server.api_url


def flow_runner(job: Job, resources: Resources) -> Manifest:
    """Runner (``executor.run``): the job as the Prefect flow, on the task runner its config names."""
    runner = task_runner(job.ctx.config.sharding)
    try:
        return build_flow.with_options(name=job.flow_name, task_runner=runner)(job, resources)
    except Exception as exc:
        if _orchestrator_lost(exc):
            raise StgrError(
                f"the temporary Prefect server stopped answering, or did not start ({type(exc).__name__}: "
                f"{exc}); for a build "
                f"this large run one that lasts: `prefect server start` in another shell, then "
                f"PREFECT_API_URL=http://127.0.0.1:4200/api and the same command again (it resumes)"
            ) from exc
        raise


def _orchestrator_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a transport error raised inside Prefect's client while Prefect runs
    its own temporary server (no PREFECT_API_URL): the server died under load, not the build."""
    import httpx

    if os.environ.get("PREFECT_API_URL"):
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RuntimeError) and "ephemeral Prefect API server" in str(seen):
            return True  # it did not start in time (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)
        if isinstance(seen, httpx.TransportError):
            files = [frame.filename for frame in traceback.extract_tb(seen.__traceback__)]
            if any(f"{os.sep}prefect{os.sep}" in name for name in files):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


if __name__ == "__main__":
    pipeline.build(Path(sys.argv[1]), Path(sys.argv[2]), runner=flow_runner)
