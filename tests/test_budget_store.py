"""One LLM budget for workers that share nothing but the bucket: the run's ledger is an object
updated by conditional writes (``storage/ledger.py``), over real HTTP to the moto server, through
the fault-injecting proxy (which also makes moto's conditional PUTs atomic, as S3's are)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from stgr_builder.core.resources import Budget
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import StgrError
from stgr_builder.flows.build import flow_runner
from stgr_builder.pipeline import build
from stgr_builder.storage import Mirror
from stgr_builder.storage.ledger import SharedObject

from helpers.s3_faults import Fault, FaultProxy
from helpers.small_demo import small_source, write_config

LLM = {"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "judge": {"enabled": False}}
TOKENS_PER_REQUEST = 7

# One process spending from the ledger: acquire until refused, tokens for each; prints its count.
SPENDER = (
    "import sys; from stgr_builder.core.resources import Budget\n"
    "budget = Budget(int(sys.argv[2]), None, ledger=sys.argv[1]); taken = 0\n"
    "while budget.acquire():\n"
    "    taken += 1; budget.add_tokens(int(sys.argv[3]))\n"
    "print(taken)\n"
)


@pytest.fixture
def proxy(s3, monkeypatch):
    """The proxy in front of moto, PUTs one at a time, as the endpoint of everything here."""
    with FaultProxy(s3.endpoint, one_write_at_a_time=True) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        yield running


def spend(ledger: str, cap: int) -> int:
    """Acquisitions one worker (its own ``Budget``) got from the ledger, each with its tokens."""
    budget, taken = Budget(cap, None, ledger=ledger), 0
    while budget.acquire():
        taken += 1
        budget.add_tokens(TOKENS_PER_REQUEST)
    return taken


def ledger_puts(proxy: FaultProxy) -> int:
    return sum(1 for method, path, _ in proxy.requests if method == "PUT" and "/_cache/budget/" in path)


def stored(s3, key: str) -> dict:
    return json.loads(s3.fs.cat_file(f"{s3.bucket}/{key}"))


def test_threads_and_processes_draw_exactly_the_cap_from_one_bucket_ledger(s3, proxy):
    cap, key = 24, "ds/_cache/budget/run-1.json"
    ledger = s3.url(key)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER, ledger, str(cap), str(TOKENS_PER_REQUEST)], stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    taken: list[int] = []
    threads = [threading.Thread(target=lambda: taken.append(spend(ledger, cap))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    taken += [int(output) for output in outputs]
    assert sum(taken) == cap, taken
    assert {k: stored(s3, key)[k] for k in ("requests", "tokens")} == {
        "requests": cap,
        "tokens": cap * TOKENS_PER_REQUEST,
    }
    # Every landed write changed the counts (2 per acquisition); more PUTs were lost races.
    assert ledger_puts(proxy) > 2 * cap


def test_a_lost_race_reads_again_and_applies_the_change_to_the_newer_state(s3, proxy):
    """A writer lands between this update's read and its PUT: the PUT gets a 412 and the change
    runs again on what the other wrote; both counts are kept."""
    url = s3.url("ds/_cache/budget/run-2.json")
    seen: list[int] = []

    def add_one(state: dict) -> None:
        seen.append(state.get("n", 0))
        if len(seen) == 1:  # another process's write, after this update read the object
            SharedObject(url).update(lambda data: json.loads(data or b"{}"), lambda other: other.update(n=10))
        state["n"] = state.get("n", 0) + 1

    SharedObject(url).update(lambda data: json.loads(data or b"{}"), add_one)
    assert seen == [0, 10]
    assert json.loads(s3.fs.cat_file(url))["n"] == 11
    # the first PUT (a create) lost to the other's create; then an If-Match one landed
    assert ledger_puts(proxy) == 3


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("PUT", "/_cache/budget/", "slowdown", times=2), Fault("PUT", "/_cache/budget/", "drop", times=2)],
        [Fault("PUT", "/_cache/budget/", "lost", times=3)],
    ],
    ids=["slowdown-and-dropped-upload", "reply-lost-after-the-write"],
)
def test_transport_faults_on_the_ledger_leave_exact_counts(s3, monkeypatch, faults):
    """A 503 SlowDown, an upload cut mid-body, a write whose reply never came (the client's retry
    then meets its own write: a 412, found by its write id, not counted twice)."""
    cap, key = 5, "ds/_cache/budget/run-3.json"
    expected = {fault.kind: fault.times for fault in faults}
    with FaultProxy(s3.endpoint, faults, one_write_at_a_time=True) as faulty:
        monkeypatch.setenv("AWS_ENDPOINT_URL", faulty.endpoint)
        assert spend(s3.url(key), cap) == cap
    assert dict(faulty.injected) == expected
    assert {k: stored(s3, key)[k] for k in ("requests", "tokens")} == {
        "requests": cap,
        "tokens": cap * TOKENS_PER_REQUEST,
    }


def test_a_shared_budget_on_a_store_without_conditional_writes_is_refused():
    budget = Budget(3, None, ledger="memory://bucket/ds/_cache/budget/r.json")
    with pytest.raises(StgrError, match="not supported yet"):
        budget.acquire()


def shard_digests(manifest: bytes) -> dict[str, str]:
    return {shard["path"]: shard["sha256"] for shard in json.loads(manifest)["shards"]}


@pytest.mark.slow
def test_one_budget_across_dask_workers_sharing_only_the_bucket(s3, proxy, monkeypatch, tmp_path_factory):
    """Two Dask workers, each on its own copy of the bucket's dataset, spend one budget: the
    LLM server gets exactly the budget's new requests (work remains), no ledger stays behind, and
    a second run finishes with the rows of an unbudgeted local build. With the ledger in each
    worker's copy (the bug this fixes) the server got 12: each worker spent the whole budget."""
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dry-run")
    budget, source = 6, small_source(tmp_path_factory)
    annotator = {**LLM, "concurrency": 2}
    # the workers and the runner pace a build: left out of its id, so the three runs are one build
    dask = {"samples_per_shard": 8, "workers": 2, "runner": "dask"}
    capped = write_config(source, "budget-dask", annotator={**annotator, "budget": budget}, sharding=dask)
    free = write_config(source, "budget-free", annotator=annotator, sharding={**dask, "runner": "thread"})
    local = tmp_path_factory.mktemp("budget-bucket") / "local"
    with serve_llm(latency_ms=30) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(free, local)
        unbudgeted = server.stats()["total"]
        first = build(capped, s3.url("ds"), runner=flow_runner)
        sent = server.stats()["total"] - unbudgeted
        assert not s3.fs.find(f"{s3.bucket}/ds/_cache/budget")  # the run's ledger went with it
        s3.fs.pipe_file(f"{s3.bucket}/ds/_cache/budget/killed-run.json", b'{"requests": 3, "tokens": 0}')
        second = build(free, s3.url("ds"))
    assert not s3.fs.find(f"{s3.bucket}/ds/_cache/budget")  # a killed run's ledger: removed at the end
    assert unbudgeted > budget  # the budget stops the first run short
    assert not first.complete and first.pending_reasons.get("budget")
    assert sent == budget, sent  # one ledger for both workers: never more, and all of it spent
    assert second.complete
    assert shard_digests(s3.fs.cat_file(f"{s3.bucket}/ds/manifest.json")) == shard_digests(
        (local / "manifest.json").read_bytes()
    )


def test_a_budgeted_build_of_isolated_workers_on_another_store_is_refused_before_any_work(
    tmp_path_factory, monkeypatch
):
    """memory:// stands for a store without the conditional writes this uses (gs://, az://)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dry-run")
    source = small_source(tmp_path_factory)
    config = write_config(
        source, "budget-memory", annotator={**LLM, "budget": 3}, sharding={"workers": 2, "runner": "dask"}
    )
    with pytest.raises(StgrError, match="memory://.* not supported yet"):
        build(config, "memory://bucket/ds", runner=flow_runner)


def test_the_mirror_never_syncs_budget_ledgers_nor_the_lock(s3, tmp_path):
    """A thread build's ledger in its staging copy stays there (no later run reads it), and a
    ledger in the bucket is neither pulled into a copy nor taken for an extra to delete."""
    copy = tmp_path / "ds"
    for rel in ("plan.json", "_cache/budget/run-local.json", ".stgr-lock"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_text("{}")
    mirror = Mirror(s3.url("ds"), copy)
    assert mirror.push(lambda rel: True) == ["plan.json"]
    s3.fs.pipe_file(f"{s3.bucket}/ds/_cache/budget/run-shared.json", b"{}")
    assert mirror.pull() == [] and mirror.delete_extras() == []
    assert not (copy / "_cache/budget/run-shared.json").exists()
    assert mirror.remove_tree("_cache/budget") == ["_cache/budget/run-shared.json"]
    assert sorted(p.split("/ds/", 1)[1] for p in s3.fs.find(f"{s3.bucket}/ds")) == ["plan.json"]
