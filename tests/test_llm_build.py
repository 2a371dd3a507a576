"""Builds of a small demo set with the openai backend against the shipped server (real client,
real HTTP on 127.0.0.1): rows pass every rule; faults end as rows or rejects, none lost; a build
killed with SIGKILL mid-annotation resumes without paying again; the budget leaves samples for
the next run; the API key appears in no output."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stgr_builder.annotate.cache import ResponseCache
from stgr_builder.audit import connect, summary
from stgr_builder.core.arrow import table_to_rows
from stgr_builder.dryrun.demo import demo_config, generate_demo
from stgr_builder.dryrun.server import FAULT_KINDS, serve_llm
from stgr_builder.models import PENDING_REASONS, CotRow, RejectCode, RlRow
from stgr_builder.pipeline import build, context
from stgr_builder.sources import ingest
from stgr_builder.verify import check_row

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}

pytestmark = pytest.mark.slow

LLM_CODES = {RejectCode.LLM_ERROR.value, RejectCode.LLM_INVALID_REPLY.value}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llm-demo")
    generate_demo(folder, seed=0, n_videos=2, n_images=1)
    return folder


def write_config(source: Path, name: str, **annotator) -> Path:
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "timeout": 2.0,
            "max_retries": 1,
            **NO_JUDGE,
            **annotator,
        }
    )
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def llm_env(monkeypatch):
    key = "sk-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)

    def point_at(server):
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        return key

    return point_at


def rows(out: Path, view: str, model):
    with connect(out) as con:
        return table_to_rows(con.sql(f"SELECT * FROM {view} ORDER BY id").to_arrow_table(), model)


def reject_rows(out: Path) -> list[tuple]:
    with connect(out) as con:
        return con.sql("SELECT id, stage, code, message FROM rejects ORDER BY id").fetchall()


def sample_ids(config: Path) -> set[str]:
    ctx = context(config, config.parent / "unused")
    samples, rejects, _ = ingest(ctx.config, ctx.config_dir)
    return {s.id for s in samples} | {r.id for r in rejects}


def shard_digests(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["shards"]}


def test_demo_build_through_the_flow_passes_every_rule_and_leaks_no_key(source, llm_env, tmp_path, caplog):
    from stgr_builder.flows.build import flow_runner

    config = write_config(source, "flow", concurrency=4)
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    with serve_llm() as server:
        key = llm_env(server)
        manifest = build(config, out, runner=flow_runner)
        requests = server.stats()["total"]
        # A second run of a finished build makes no request at all.
        build(config, out, runner=flow_runner)
        assert server.stats()["total"] == requests

    samples = {s.id: s for s in ingest(context(config, tmp_path / "x").config, config.parent)[0]}
    cot = rows(out, "cot", CotRow)
    assert len(cot) >= 0.9 * len(samples)
    for model, view in ((CotRow, "cot"), (RlRow, "rl")):
        for row in rows(out, view, model):
            sample = samples[row.id]
            duration = None if row.image_path else 1e9  # durations are checked by verify; not repeated here
            assert check_row(row, duration=duration, span=sample.span, gold_answer=sample.answer) == []
            assert row.provenance.prompt_name == "stgr-cot-llm"
            assert row.provenance.annotator_model == "stgr-dry-run"
    assert any("</box>at<t>" in row.reasoning_process for row in cot)
    # Cost: every reply a row used is counted, and the audit shows it.
    assert manifest.llm.requests == requests and manifest.llm.prompt_tokens > 0 and manifest.llm.images > 0
    cost = next(t for t in summary(out) if t.title == "LLM cost")
    assert cost.rows[0][0] == requests
    # The key is in no file of the dataset folder (cache included) and in no log record.
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in caplog.text


def test_faults_of_every_kind_end_each_sample_as_a_row_a_reject_or_pending(source, llm_env, tmp_path):
    config = write_config(
        source,
        "faults",
        concurrency=4,
        timeout=0.5,
        max_retries=1,
        max_invalid_retries=1,
        # A request per crop and vote (two votes needed): requests enough for every kind of fault.
        judge={"enabled": True, "crops_per_request": 1, "votes": 2, "threshold": 2},
    )
    out = tmp_path / "out"
    with serve_llm(fault_rate=0.2, retry_after_s=0.05, hang_s=1.0) as server:
        llm_env(server)
        manifest = build(config, out)
        outcomes = server.stats()["by_outcome"]
    assert set(FAULT_KINDS) <= set(outcomes), outcomes  # every kind was injected
    cot_ids = [row.id for row in rows(out, "cot", CotRow)]
    rejects = reject_rows(out)
    reject_ids = [r[0] for r in rejects]
    assert len(set(cot_ids)) == len(cot_ids) and len(set(reject_ids)) == len(reject_ids)
    assert not set(cot_ids) & set(reject_ids)  # none twice
    assert set(cot_ids) | set(reject_ids) <= sample_ids(config)
    # none lost: what is not written waits for the next run, with its reasons
    assert manifest.counts["samples"] + manifest.pending == len(sample_ids(config))
    assert manifest.counts["samples"] == len(cot_ids) + len(rejects)
    assert manifest.complete == (manifest.pending == 0) and set(manifest.pending_reasons) <= set(PENDING_REASONS)
    for _, stage, code, message in rejects:
        assert message, code  # a reason, never a silent empty answer
        if code in LLM_CODES:
            assert stage == "annotate"


def _cache_count(out: Path) -> int:
    folder = out / "_cache" / "llm"
    return len(list(folder.glob("*/*.json"))) if folder.is_dir() else 0


def test_a_build_killed_mid_annotation_resumes_without_paying_twice(source, llm_env, tmp_path):
    config = write_config(source, "kill", concurrency=2)
    reference, out = tmp_path / "reference", tmp_path / "killed"
    with serve_llm() as server:
        llm_env(server)
        build(config, reference)
        total = server.stats()["total"]

    with serve_llm(latency_ms=150) as server:
        llm_env(server)
        script = (
            "import sys; from pathlib import Path; from stgr_builder.pipeline import build; "
            "build(Path(sys.argv[1]), Path(sys.argv[2]))"
        )
        proc = subprocess.Popen([sys.executable, "-c", script, str(config), str(out)], env=os.environ.copy())
        deadline = time.monotonic() + 120
        while _cache_count(out) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        received = ResponseCache(out).keys()
        assert 4 <= len(received) < total  # killed in the middle of annotation
        assert not (out / "manifest.json").exists()

        server.reset_stats()
        build(config, out)
        asked = set(server.stats()["by_key"])
        assert not asked & received  # no reply already received was asked for again
        assert len(asked) == total - len(received)
        assert shard_digests(out) == shard_digests(reference)  # the same rows, byte for byte

        server.reset_stats()
        build(config, out)
        assert server.stats()["total"] == 0


def test_the_budget_leaves_samples_for_the_next_run(source, llm_env, tmp_path):
    from stgr_builder.cli import app

    config = write_config(source, "budget", concurrency=2, budget=8)
    out = tmp_path / "out"
    with serve_llm() as server:
        llm_env(server)
        result = CliRunner().invoke(app, ["build", str(config), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert server.stats()["total"] == 8
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] is False and manifest["pending"] > 0
        assert f"{manifest['pending']} samples left for the next run (budget reached)" in result.output
        # Not rejects: what is written plus what is pending is every sample.
        assert manifest["counts"]["samples"] + manifest["pending"] == len(sample_ids(config))
        assert not {r[2] for r in reject_rows(out)} & LLM_CODES

        runs = 0
        while not manifest["complete"]:
            before = server.stats()["total"]
            manifest = build(config, out).model_dump()
            assert 0 < server.stats()["total"] - before <= 8 or manifest["complete"]
            runs += 1
            assert runs < 10
    written = {row.id for row in rows(out, "cot", CotRow)} | {r[0] for r in reject_rows(out)}
    assert written == sample_ids(config)
    assert manifest["llm"]["requests"] == server.stats()["total"]  # each reply paid once, all counted
