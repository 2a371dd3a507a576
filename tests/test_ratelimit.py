"""Rate limits: `stgr serve-llm --rpm` refuses past its limit with 429, Retry-After and the
x-ratelimit headers; a build with `annotator.rpm` under the limit is never refused; a build with
no cap keeps to the server's headers (a few refusals at most) and annotates every sample.

The demo at the issue's scale (`--rpm 30`, ~70 requests) takes minutes; here the small demo (23
requests) meets a limit of 240 a minute, the same ratio of need to limit."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from stgr_builder.annotate.ratelimit import RateLimiter, estimate_tokens, parse_duration
from stgr_builder.audit import query
from stgr_builder.dryrun.demo import demo_config, generate_demo
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import StgrWarning
from stgr_builder.pipeline import build

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}

SERVER_RPM = 240


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_two_processes_share_one_pace(tmp_path):
    """Two limiters on one state file (two Dask workers, say) space their requests together."""
    clock = FakeClock()
    path = tmp_path / "ratelimit.json"
    a, b = RateLimiter(path, rpm=120, clock=clock), RateLimiter(path, rpm=120, clock=clock)
    assert a.reserve() == 0.0  # the slow-start probe goes at once ...
    assert b.reserve() is None  # ... and holds the gate until a reply says what the limits are
    a.observe(200, {})  # a server with no rate-limit header: only the cap paces
    waits = [(a if i % 2 else b).reserve() for i in range(6)]
    # a burst of half a second's worth (1, which the probe took), then 2 a second, whoever asks
    assert waits == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    state = json.loads(path.read_text())
    assert state["learned"] == {"rpm": None, "tpm": None}


def test_server_headers_are_learned_and_a_429_pauses_everyone(tmp_path):
    clock = FakeClock()
    limiter = RateLimiter(tmp_path / "state.json", clock=clock)  # no cap
    assert limiter.reserve() == 0.0
    limiter.observe(
        200,
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "100ms",
        },
    )
    # kept to 90% of 600 a minute (9 a second), starting from what the server said remains
    assert limiter.reserve() == pytest.approx(1 / 9)
    limiter.observe(429, {"retry-after-ms": "2000"})
    assert limiter.reserve() == pytest.approx(2.0)
    assert limiter.stats["refused"] == 1
    assert parse_duration("6m0s") == 360 and parse_duration("1.5s") == 1.5 and parse_duration("20ms") == 0.02
    body = json.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x" * 400},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * 40_000}},
                    ],
                }
            ]
        }
    ).encode()
    assert 185 < estimate_tokens(body) < 240 and estimate_tokens(body, 100) == estimate_tokens(body) + 100


def test_with_nothing_to_pace_the_state_file_is_not_rewritten_yet_a_pause_still_reaches_everyone(tmp_path):
    """No cap and a server that advertises no limits (vLLM, say): two calls a request change
    nothing, so they write nothing; a 429 seen by another worker still pauses this one."""
    clock = FakeClock()
    path = tmp_path / "ratelimit.json"
    quiet, other = RateLimiter(path, clock=clock), RateLimiter(path, clock=clock)
    assert quiet.reserve() == 0.0
    quiet.observe(200, {})
    before = (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes())
    time.sleep(0.02)  # past the file system's timestamp tick
    for _ in range(20):
        assert quiet.reserve() == 0.0
        quiet.observe(200, {})
    assert (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes()) == before
    other.observe(429, {"retry-after-ms": "3000"})  # another worker is refused
    assert quiet.reserve() == pytest.approx(3.0)
    clock.now += 3.0
    assert quiet.reserve() == 0.0
    path.write_bytes(b'{"learned": {"rpm"')  # damaged: named in a warning, started afresh, never an error
    with pytest.warns(StgrWarning, match=r"ratelimit.json: not JSON; ignored"):
        assert quiet.reserve() == 0.0
    assert json.loads(path.read_text())["probe_until"] > clock.now


def test_serve_llm_refuses_past_its_rpm_with_retry_after():
    with serve_llm(rpm=60) as server:  # one a second, a burst of one

        def ask():
            request = urllib.request.Request(
                server.base_url + "/chat/completions",
                method="POST",
                data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    return reply.status, dict(reply.headers)
            except urllib.error.HTTPError as err:
                return err.code, dict(err.headers)

        first, second = ask(), ask()
        assert first[0] == 200 and second[0] == 429
        assert first[1]["x-ratelimit-limit-requests"] == "60"
        assert "x-ratelimit-reset-requests" in first[1] and "x-ratelimit-remaining-requests" in first[1]
        assert 0 < float(second[1]["Retry-After"]) <= 1.0 and int(second[1]["retry-after-ms"]) > 0
        assert server.stats()["by_outcome"] == {"ok": 1, "rate_limited": 1}


def test_the_cli_server_takes_rpm_and_tpm():
    result = subprocess.run(
        [sys.executable, "-m", "stgr_builder.cli", "serve-llm", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "--rpm" in result.stdout and "--tpm" in result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ratelimit-demo")
    generate_demo(folder, seed=0, n_videos=2, n_images=1)
    return folder


def _build(source: Path, out: Path, monkeypatch, **annotator):
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "concurrency": 8,
            **NO_JUDGE,
            **annotator,
        }
    )
    config["sharding"].update({"samples_per_shard": 8, "workers": 2})  # 16 requests could be in flight
    path = source / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + secrets.token_hex(8))
    with serve_llm(rpm=SERVER_RPM, latency_ms=20) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        manifest = build(path, out)
        return manifest, server.stats()


@pytest.mark.slow
def test_a_cap_under_the_limit_is_never_refused(source, tmp_path, monkeypatch):
    manifest, stats = _build(source, tmp_path / "capped", monkeypatch, rpm=SERVER_RPM * 9 // 10)
    assert manifest.complete and stats["by_outcome"] == {"ok": stats["total"]}
    assert stats["total"] == manifest.counts["samples"] > SERVER_RPM / 60 * 4  # more than a few seconds' worth


@pytest.mark.slow
def test_no_cap_keeps_to_the_servers_headers(source, tmp_path, monkeypatch):
    out = tmp_path / "uncapped"
    manifest, stats = _build(source, out, monkeypatch)
    refused = stats["by_outcome"].get("rate_limited", 0)
    assert manifest.complete and manifest.pending == 0
    assert refused <= 0.1 * stats["total"], stats
    assert stats["by_outcome"]["ok"] == manifest.counts["samples"]  # every sample annotated, once
    assert query(out, "SELECT count(*) FROM rejects").rows == [(0,)]


_WORKER = """
import asyncio, sys, time
from pathlib import Path
from stgr_builder.annotate.ratelimit import RateLimiter

limiter = RateLimiter(Path(sys.argv[1]), rpm=600)
async def main():
    for _ in range(10):
        await limiter.wait()
        print(time.time(), flush=True)
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
asyncio.run(main())
"""


@pytest.mark.slow  # two processes against a server
def test_two_real_processes_keep_one_cap_together(tmp_path):
    """Two processes (two Dask workers, say) drawing from one state file: together they never
    start more than the cap allows (600 a minute: 10 a second, a burst of 5)."""
    path = tmp_path / "ratelimit.json"
    RateLimiter(path, rpm=600).observe(200, {})  # past the slow start: a server without headers
    start = time.time() + 1.5  # both begin together, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        for _ in range(2)
    ]
    times = sorted(float(line) for proc in procs for line in proc.communicate(timeout=60)[0].split())
    assert len(times) == 20
    assert times[-1] - times[0] >= (20 - 5) / 10 - 0.05  # paced as one: 15 after the burst, at 10 a second
    for i, t in enumerate(times):  # no second holds more than 10 a second plus the burst
        assert sum(1 for u in times[i:] if u < t + 1.0) <= 10 + 5
