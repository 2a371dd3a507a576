"""SIGINT and SIGTERM end ``stgr build`` within seconds in every state it waits in: on an LLM
reply (the preparation pool's workers in the same process group), asleep on a stored pause,
polling a batch, inside a Dask LocalCluster; ``stgr serve-llm`` too. Each ends with exit 130
or 143 and one line (what finished, what is pending, "run again to resume"), no traceback;
a resume is byte-identical to a clean build.

Before: Ctrl-C during an LLM build exited 0 after 5 s with an empty line and no manifest;
SIGINT while asleep on a stored pause printed a 22-line ForkServerProcess traceback and slept
on; SIGTERM did nothing. Real ``stgr build`` processes against the shipped server (real client,
real HTTP on 127.0.0.1), whose latency and batch delay the tests turn up and down."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from stgr_builder.dryrun.demo import demo_config, generate_demo
from stgr_builder.dryrun.server import DryRunServer, serve_llm
from stgr_builder.pipeline import build

from helpers import seeded

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}

pytestmark = pytest.mark.slow

#: Seconds a signalled command may take to end (the line, then its children reaped).
STOP_S = 15.0
KEY = "sk-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stopping")
    generate_demo(folder, seed=0, n_videos=2, n_images=1)
    return folder


def write_config(source: Path, name: str, sharding: dict | None = None, **annotator) -> Path:
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "timeout": 120.0,
            **NO_JUDGE,
            **annotator,
        }
    )
    config["sharding"].update(sharding or {})
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def server():
    with serve_llm() as running:
        yield running


@pytest.fixture
def fast(server):
    """The server answering at once; whatever a test turned up is turned back down after it."""
    server.options.latency_ms = 0.0
    server.options.batch_delay_s = 0.1
    yield server
    server.options.latency_ms = 0.0
    server.options.batch_delay_s = 0.1


def shard_digests(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["shards"]}


@pytest.fixture(scope="module")
def clean_build(source, server, tmp_path_factory) -> Path:
    """An uninterrupted build (in this process, no orchestrator); do not modify it."""
    out = tmp_path_factory.mktemp("clean") / "out"
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        assert build(write_config(source, "clean", prepare_processes=0), out).complete
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return out


@pytest.fixture(scope="module")
def clean(clean_build) -> dict[str, str]:
    """The shard digests of the uninterrupted build."""
    return shard_digests(clean_build)


def cli(server: DryRunServer, *args: str) -> subprocess.Popen:
    """A ``stgr`` command in its own process group (a terminal's Ctrl-C reaches the whole group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "stgr_builder.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "COLUMNS": "200"},
        start_new_session=True,
    )


def wait_for(proc: subprocess.Popen, reached: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not reached():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


def stop(proc: subprocess.Popen, signum: int, group: bool, before: int = 0) -> tuple[str, float]:
    """Send the signal (to the process group, as a terminal's Ctrl-C does, or to the command
    alone, as ``kill``); assert the exit status, one line and no traceback; that line.
    ``before``: lines on stderr the command may have printed before the signal."""
    sent = time.monotonic()
    os.killpg(proc.pid, signum) if group else os.kill(proc.pid, signum)
    # communicate() returns once every holder of the pipes is gone: the children too.
    stdout, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signum, (proc.returncode, stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 1 + before and sum("stopped by" in line for line in lines) == 1, (stdout, stderr)
    # (stdout may hold Ultralytics' one-time settings notice, printed by a fresh worker process)
    for text in (stdout, stderr):
        assert "Traceback" not in text and "KeyboardInterrupt" not in text and KEY not in text
    assert took < STOP_S, f"took {took:.1f} s to stop"
    return lines[-1], took


def stopped_line(line: str, name: str, out: Path) -> str:
    """What the line says between its fixed start and end."""
    start, end = f"stopped by {name}: {out}: ", "; run again to resume"
    assert line.startswith(start) and line.endswith(end), line
    return line[len(start) : -len(end)]


def resume(server: DryRunServer, config: Path, out: Path) -> None:
    proc = cli(server, "build", str(config), "--out", str(out))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, (stdout, stderr)


#: Ctrl-C in a terminal reaches the whole process group; ``kill`` (or a scheduler) the command.
SENT = {"SIGINT": (signal.SIGINT, True), "SIGTERM": (signal.SIGTERM, False)}


@pytest.mark.parametrize("first, second", seeded.sample([("SIGINT", "SIGTERM"), ("SIGTERM", "SIGINT")], salt="two"))
def test_a_signal_waiting_on_replies_then_one_asleep_on_a_pause_then_a_resume_is_byte_identical(
    source, fast, clean, tmp_path, first, second
):
    out = tmp_path / "out"
    # 1. While the requests wait on the server's replies (the forkserver preparation pool's
    #    workers in the process group too).
    config = write_config(source, "replies", prepare_processes=1)
    fast.options.latency_ms = 120_000.0
    asked = fast.stats()["total"]
    proc = cli(fast, "build", str(config), "--out", str(out))
    wait_for(proc, lambda: fast.stats()["total"] > asked, "waiting on a reply")
    line, took = stop(proc, *SENT[first])
    said = stopped_line(line, first, out)
    assert said.startswith("0 of ") and said.endswith(" pending"), line
    assert not (out / "manifest.json").exists()
    print(f"{first} while waiting on replies: stopped in {took:.1f} s")

    # 2. While it sleeps on a stored pause a year ahead (a hand edit, or a node whose clock ran
    #    ahead), which it reads as at most a Retry-After's 30 s.
    fast.options.latency_ms = 0.0
    state = out / "_cache" / "ratelimit.json"
    far = time.time() + 3e7
    state.write_text(json.dumps({"pause_until": far}))
    asked = fast.stats()["total"]
    proc = cli(fast, "build", str(write_config(source, "pause", prepare_processes=1)), "--out", str(out))

    def asleep() -> bool:  # the build has read the pause (and written it back clamped)
        try:
            return json.loads(state.read_text()).get("pause_until", far) < far
        except ValueError:  # read while it is being written
            return False

    wait_for(proc, asleep, "asleep on the pause")
    line, took = stop(proc, *SENT[second])
    assert fast.stats()["total"] == asked, "a request went out during the pause"
    assert stopped_line(line, second, out).endswith(" pending")
    print(f"{second} asleep on a pause: stopped in {took:.1f} s")

    # 3. Run again, the far pause stored again: it ends, and its rows are a clean build's.
    state.write_text(json.dumps({"pause_until": time.time() + 3e7}))
    resume(fast, config, out)
    assert shard_digests(out) == clean


@pytest.mark.parametrize("sent", seeded.sample(["SIGINT", "SIGTERM"], salt="batch"))
def test_a_signal_while_polling_a_batch_stops_and_keeps_the_batch_to_collect(source, fast, tmp_path, sent):
    config = write_config(source, "batch", mode="batch", batch_poll_s=0.5, prepare_processes=0)
    out = tmp_path / "out"
    fast.options.batch_delay_s = 600.0
    proc = cli(fast, "build", str(config), "--out", str(out))

    def submitted() -> bool:
        records = [json.loads(p.read_text()) for p in (out / "_cache" / "batches").glob("*.json")]
        return any(chunk.get("batch_id") for record in records for chunk in record["chunks"])

    wait_for(proc, submitted, "polling a submitted batch")
    time.sleep(1.0)  # a poll or two
    line, took = stop(proc, *SENT[sent])
    said = stopped_line(line, sent, out)
    assert " submitted batches, kept to collect)" in said, line
    print(f"{sent} polling a batch: stopped in {took:.1f} s")


@pytest.mark.parametrize("sent", seeded.sample(["SIGINT", "SIGTERM"], salt="dask"))
def test_a_signal_inside_a_dask_local_cluster_stops_the_build(source, fast, tmp_path, sent):
    config = write_config(source, "dask", sharding={"runner": "dask", "workers": 1})
    out = tmp_path / "out"
    fast.options.latency_ms = 120_000.0
    asked = fast.stats()["total"]
    proc = cli(fast, "build", str(config), "--out", str(out))
    wait_for(proc, lambda: fast.stats()["total"] > asked, "waiting on a reply in a Dask worker")
    # Before the signal, Dask may warn on stderr that the dashboard's port is taken (a shared machine).
    line, took = stop(proc, *SENT[sent], before=2)
    assert stopped_line(line, sent, out).endswith(" pending")
    print(f"{sent} inside a Dask LocalCluster: stopped in {took:.1f} s")


def test_serve_llm_ends_on_sigterm(server):
    proc = cli(server, "serve-llm", "--port", "0")
    assert proc.stdout is not None and "listening on" in proc.stdout.readline()
    sent = time.monotonic()
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143 and stderr.strip() == "stopped by SIGTERM" and time.monotonic() - sent < STOP_S


def test_ctrl_c_ends_a_long_audit_query(server, clean_build):
    # It ignored SIGINT for 8 minutes (DuckDB, busy in C code, never let the main thread see it).
    proc = cli(server, "audit", str(clean_build), "--sql", "SELECT count(*) FROM range(10000000000000)")
    time.sleep(5.0)  # started, and busy in the query
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130 and stderr.strip() == "stopped by SIGINT" and took < STOP_S, (stderr, took)
    print(f"SIGINT during an audit query: stopped in {took:.1f} s")
