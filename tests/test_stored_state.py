"""Stored state is checked when read, and bounded: every file under ``<out>/_cache`` that is
unreadable or of the wrong shape is named in a warning and rebuilt or ignored (it ended every
later build with rc 1 "TypeError"); a stored pause or limit is clamped to what a server could
have asked (a pause far in the future hung the build for good). An endpoint that never answers
stops the build within ``annotator.dead_endpoint_s`` (it took 394 s for 24 samples with
``timeout: 5``). A provider that refuses to list batches gets a warning, not rc 1."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
import yaml

from flows.build import _orchestrator_lost
from stgr_builder.annotate.batch import BATCH_DIR, BatchJobs, batch_progress, pending_batches
from stgr_builder.annotate.cache import CacheEntry, ResponseCache
from stgr_builder.annotate.endpoint import EndpointDead, EndpointWatch, shown_url
from stgr_builder.annotate.ratelimit import MAX_PAUSE_S, MAX_QUEUE_S, PROBE_S, RateLimiter
from stgr_builder.core.resources import Budget
from stgr_builder.dryrun.demo import demo_config, generate_demo
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import StgrError, StgrWarning
from stgr_builder.models import Stage
from stgr_builder.pipeline import build
from stgr_builder.stages import StageEntry, StageStore

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the rate-limit state -------------------------------------------------------------------


def test_a_stored_pause_far_in_the_future_waits_no_longer_than_a_retry_after(tmp_path):
    clock = FakeClock()
    path = tmp_path / "ratelimit.json"
    # A hand edit, or a node whose clock ran a year ahead: the build slept for good.
    path.write_text(json.dumps({"learned": {"rpm": None, "tpm": None}, "pause_until": clock.now + 3e7}))
    assert RateLimiter(path, clock=clock).reserve() == pytest.approx(MAX_PAUSE_S)
    # A bucket dated in the future and drained far below zero, a learned limit of almost nothing.
    path.write_text(json.dumps({"learned": {"rpm": 1e-9, "tpm": None}, "req": [-1e12, clock.now + 3e7]}))
    # At most MAX_QUEUE_S of queue plus one request's spacing at the lowest limit (1 a minute, at 90%).
    assert RateLimiter(path, clock=clock).reserve() <= MAX_QUEUE_S + 60 / 0.9 + 1
    # A slow-start probe held far ahead lets the next request try within PROBE_S.
    path.write_text(json.dumps({"probe_until": clock.now + 3e7}))
    limiter = RateLimiter(path, clock=clock)
    assert limiter.reserve() is None
    clock.now += PROBE_S
    assert limiter.reserve() == 0.0


@pytest.mark.parametrize(
    "stored, says",
    [
        ([1, 2], "a JSON list, not an object"),
        ({"pause_until": "soon"}, "pause_until is 'soon', not a number"),
        ({"pause_until": float("nan")}, "pause_until is nan, not a number"),
        ({"req": 5, "learned": {"rpm": 60}}, r"req is 5, not \[level, time\]"),
        ({"learned": {"rpm": -1}}, "learned is .* not limits per minute"),
        ({"strikes": "x"}, "strikes is 'x', not a count"),
        ("{not json", "not JSON"),
    ],
)
def test_a_rate_limit_state_of_the_wrong_shape_is_named_and_started_afresh(tmp_path, stored, says):
    path = tmp_path / "_cache" / "ratelimit.json"
    path.parent.mkdir()
    path.write_text(stored if isinstance(stored, str) else json.dumps(stored))
    limiter = RateLimiter(path, clock=FakeClock())
    with pytest.warns(StgrWarning, match=rf"{path}: {says}; ignored, rate-limit state starts afresh"):
        assert limiter.reserve() == 0.0  # was: TypeError: unsupported operand type(s) ...
    limiter.observe(200, {"x-ratelimit-limit-requests": "600"})
    assert json.loads(path.read_text())["learned"]["rpm"] == 600  # rebuilt


def test_a_rate_limit_state_that_cannot_be_opened_is_named_and_kept_in_memory(tmp_path):
    path = tmp_path / "ratelimit.json"
    path.mkdir()  # a folder where the file should be
    limiter = RateLimiter(path, clock=FakeClock())
    with pytest.warns(StgrWarning, match=rf"{path}: cannot be opened .*rate limits kept in memory"):
        assert limiter.reserve() == 0.0
    limiter.observe(429, {"retry-after": "2"})
    assert limiter.reserve() == pytest.approx(2.0)


# -- the other stored files -----------------------------------------------------------------


def test_a_budget_ledger_of_the_wrong_shape_is_named_and_counts_from_zero(tmp_path):
    ledger = tmp_path / "_cache" / "budget" / "run.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('["not", "counts"]')
    budget = Budget(2, None, ledger=ledger)
    with pytest.warns(StgrWarning, match=rf"{ledger}: not a budget ledger"):
        assert budget.acquire()  # was: TypeError
    assert budget.acquire() and not budget.acquire()  # the cap still holds
    assert json.loads(ledger.read_text())["requests"] == 2


def test_a_damaged_stage_entry_or_cached_reply_is_named_and_made_again(tmp_path):
    store = StageStore(tmp_path)
    entry = StageEntry(stage=Stage.PROBE, work={"x": 1})
    store.put("ab" * 32, entry)
    assert store.get(Stage.PROBE, "ab" * 32) == entry
    path = store.path(Stage.PROBE, "ab" * 32)
    path.write_text('{"stage": "probe", "payl')  # torn (a power loss) or hand-edited
    with pytest.warns(StgrWarning, match=rf"{path}: not a stored entry .*; ignored, the probe step runs again"):
        assert store.get(Stage.PROBE, "ab" * 32) is None
    assert store.get(Stage.PROBE, "cd" * 32) is None  # a plain miss says nothing (pytest: no warning)

    cache = ResponseCache(tmp_path)
    cache.put("ef" * 32, CacheEntry(kind="reply", content="hi", model="m"))
    cache.path("ef" * 32).write_text("[]")
    with pytest.warns(StgrWarning, match=rf"{cache.path('ef' * 32)}: not a cached reply .*request is made again"):
        assert cache.get("ef" * 32) is None


def test_a_batch_record_of_the_wrong_shape_is_named_and_ignored(tmp_path):
    folder = tmp_path / BATCH_DIR
    folder.mkdir(parents=True)
    (folder / "bad.json").write_text(json.dumps({"intent": "x", "chunks": 5}))
    (folder / "torn.json").write_text('{"intent": "y", "chu')
    good = {"intent": "z", "chunks": [{"keys": ["k1", "k2"], "batch_id": "batch-1", "collected": False, "done": 1}]}
    (folder / "good.json").write_text(json.dumps(good))
    assert pending_batches(tmp_path) == (2, 1)  # was: TypeError ('int' object is not iterable)
    assert batch_progress(tmp_path) == (1, 2)
    jobs = BatchJobs(tmp_path, max_requests=10, max_bytes=1 << 20, poll_s=0.1)
    with pytest.warns(StgrWarning) as caught:
        records = jobs._records()
    assert list(records) == [folder / "good.json"]
    said = sorted(str(w.message) for w in caught)
    assert said[0].startswith(f"{folder / 'bad.json'}: its chunks are not lists of request keys; ignored")
    assert said[1].startswith(f"{folder / 'torn.json'}: not JSON; ignored")


# -- a dead endpoint --------------------------------------------------------------------------


def test_the_endpoint_watch_stops_only_an_endpoint_that_never_answered():
    clock = FakeClock(0.0)
    watch = EndpointWatch("http://user:pw@127.0.0.1:9/v1", bound_s=60, clock=clock)
    watch.sending()
    clock.now = 30
    watch.failed("timeout")  # within the bound: pending, as before
    clock.now = 61
    watch.failed("timeout")
    assert watch.dead is not None and "http://127.0.0.1:9/v1" in watch.dead and "pw" not in watch.dead
    with pytest.raises(EndpointDead):
        watch.sending()
    patient = EndpointWatch(None, bound_s=60, clock=clock)
    patient.sending()
    patient.answered()
    clock.now = 10_000
    patient.failed("timeout")  # it has answered once: today's patient retrying stands
    assert patient.dead is None
    assert shown_url(None) == "https://api.openai.com/v1"


def test_a_guard_cancels_every_request_under_way_once_the_endpoint_is_declared_dead():
    clock = FakeClock(0.0)
    watch = EndpointWatch("http://127.0.0.1:9/v1", bound_s=1, clock=clock)
    cancelled = []

    async def request(n: int) -> int:
        try:
            await asyncio.sleep(3600)  # a request that hangs
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def scenario() -> None:
        watch.sending()
        clock.now = 5
        asyncio.get_running_loop().call_later(0.05, watch.failed, "cannot connect")
        await watch.guard(asyncio.gather(*(request(n) for n in range(5)), return_exceptions=True))

    started = time.monotonic()
    with pytest.raises(EndpointDead, match=r"http://127.0.0.1:9/v1 has not answered"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 5 and sorted(cancelled) == list(range(5))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stored-state")
    generate_demo(folder, seed=0, n_videos=2, n_images=1)
    return folder


def write_config(source: Path, name: str, **annotator) -> Path:
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "max_retries": 1,
            **NO_JUDGE,
            **annotator,
        }
    )
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def llm_key(monkeypatch) -> str:
    key = "sk-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_an_endpoint_that_never_answers_stops_the_build_within_the_bound_and_loses_nothing(
    source, tmp_path, monkeypatch, llm_key
):
    config = write_config(source, "dead", timeout=1.0, dead_endpoint_s=3.0, prepare_processes=0)
    out = tmp_path / "out"
    refusing = f"http://127.0.0.1:{_closed_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", refusing)
    started = time.monotonic()
    with pytest.raises(StgrError, match=rf"the LLM endpoint {refusing} has not answered any request") as refused:
        build(config, out)
    assert llm_key not in str(refused.value)
    refused_s = time.monotonic() - started
    # A server that accepts the connection and never replies (timeout 1 s, 1 retry).
    with serve_llm(fault_rate=1.0, faults=["hang"], hang_s=30) as hanging:
        monkeypatch.setenv("OPENAI_BASE_URL", hanging.base_url)
        started = time.monotonic()
        with pytest.raises(StgrError, match=r"has not answered any request .*failed: no reply within 1s"):
            build(config, out)
        hanging_s = time.monotonic() - started
    # Nothing was written for the samples: the next run, against a live server, builds them all.
    assert not (out / "manifest.json").exists()
    with serve_llm() as live:
        monkeypatch.setenv("OPENAI_BASE_URL", live.base_url)
        manifest = build(config, out)
    assert manifest.complete and manifest.counts["stgr_cot"] > 0
    # The bound is 3 s; the rest is planning, probing and detection of the small demo.
    print(f"refused: stopped after {refused_s:.1f} s; hanging: stopped after {hanging_s:.1f} s")
    assert hanging_s < 60 and refused_s < 60


@pytest.mark.slow
def test_a_provider_that_refuses_to_list_batches_gets_a_warning_and_the_build_finishes(source, tmp_path, llm_key):
    config = write_config(source, "nolist", mode="batch", batch_poll_s=0.2, prepare_processes=0)
    out = tmp_path / "out"
    with serve_llm(list_batches=False, batch_delay_s=0.1) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        try:
            with pytest.warns(StgrWarning, match=r"refused to list batches \(GET /batches: HTTP 404\)"):
                manifest = build(config, out)  # was: rc 1 "NotFoundError: Error code: 404"
        finally:
            del os.environ["OPENAI_BASE_URL"]
        assert server.stats()["batches"] >= 1
    assert manifest.complete and manifest.counts["stgr_cot"] > 0


@pytest.mark.slow
def test_a_rate_limit_state_of_the_wrong_shape_no_longer_ends_later_builds(source, tmp_path, monkeypatch, llm_key):
    config = write_config(source, "shape", budget=4, prepare_processes=0)
    out = tmp_path / "out"
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert not build(config, out).complete  # the budget leaves samples for the next run
        state = out / "_cache" / "ratelimit.json"
        state.write_text(json.dumps({"learned": {"rpm": "fast"}, "pause_until": "later"}))
        unbudgeted = write_config(source, "shape", prepare_processes=0)
        with pytest.warns(StgrWarning, match=rf"{state}: .*; ignored, rate-limit state starts afresh"):
            manifest = build(unbudgeted, out)
    assert manifest.complete


def test_a_lost_temporary_prefect_server_is_named(monkeypatch):
    import httpx

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # An httpx error raised inside Prefect's client code (a file under .../prefect/), as the
    # temporary server's refused connections were; the same error raised elsewhere is not it.
    prefect_code = compile("raise httpx.ConnectError('[Errno 111] Connection refused')", "/x/prefect/client.py", "exec")
    other_code = compile("raise httpx.ConnectError('[Errno 111] Connection refused')", "/x/mine/client.py", "exec")
    caught = []
    for code in (prefect_code, other_code):
        try:
            try:
                exec(code, {"httpx": httpx})
            except httpx.ConnectError as exc:
                raise RuntimeError("flow run crashed") from exc
        except RuntimeError as exc:
            caught.append(exc)
    assert _orchestrator_lost(caught[0]) and not _orchestrator_lost(caught[1])
    assert _orchestrator_lost(RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server."))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")  # the user's own server: not ours to name
    assert not _orchestrator_lost(caught[0])
