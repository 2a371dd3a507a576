"""Exactly once, whatever happens to a build: faults of every kind leave samples pending (never
rejected) and a rerun against a healthy server finishes them with the rows of a clean build,
paying for no reply twice; two builds of one folder cannot run at once, and a build writes only
its own folder; a video replaced by other bytes of the same size (mtime restored) is built
again, while the same media copied elsewhere rerun nothing; one LLM budget holds across Dask
workers."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stgr_builder.annotate.cache import ResponseCache
from stgr_builder.audit import connect
from stgr_builder.cli import app
from stgr_builder.dryrun.demo import generate_demo
from stgr_builder.dryrun.server import FAULT_KINDS, serve_llm
from stgr_builder.errors import StgrError
from stgr_builder.models import PENDING_REASONS
from stgr_builder.pipeline import build

from helpers.small_demo import small_source, write_config

pytestmark = pytest.mark.slow

LLM = {"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "judge": {"enabled": False}}


def _digests(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def _rejects(out: Path) -> list[tuple]:
    with connect(out) as con:
        return con.sql("SELECT id, stage, code FROM rejects ORDER BY id").fetchall()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-exactly-once-0123456789")


def test_faults_of_every_kind_leave_samples_pending_and_a_rerun_finishes_them(
    tmp_path_factory, tmp_path, monkeypatch, api_key
):
    source = tmp_path_factory.mktemp("faults-source")
    generate_demo(source, seed=0, n_videos=3, n_images=1)
    # No retries: every transient fault the server injects reaches the build. Crop checks make
    # enough requests (over 50, all pending ones included) for every kind to come up at 0.2.
    config = write_config(
        source,
        "faulty",
        annotator={
            **LLM,
            "concurrency": 4,
            "timeout": 2.0,  # the judge runs a detector on each crop: more than 0.5s on a busy machine
            "max_retries": 0,
            "max_invalid_retries": 3,
            "judge": {"enabled": True, "crops_per_request": 1},  # a request per crop, as many as before
        },
    )
    clean, out = tmp_path / "clean", tmp_path / "out"
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(config, clean)
    with serve_llm(fault_rate=0.2, retry_after_s=0.05, hang_s=3.0) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = CliRunner().invoke(app, ["build", str(config), "--out", str(out)])
        first = server.stats()
    assert result.exit_code == 0, result.output
    assert set(FAULT_KINDS) <= set(first["by_outcome"]), first["by_outcome"]  # every kind was injected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["pending"] > 0
    assert set(manifest["pending_reasons"]) <= set(PENDING_REASONS) and manifest["pending_reasons"]
    assert f"{manifest['pending']} samples left for the next run (pending: " in result.output
    assert not {code for _, _, code in _rejects(out)} & {"llm_error", "llm_invalid_reply", "llm_reply_too_large"}
    assert not (out / "_cache" / "stages" / "annotate").is_dir() or not any(
        '"pending"' in p.read_text() for p in (out / "_cache" / "stages" / "annotate").rglob("*.json")
    )

    received = ResponseCache(out).keys()
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        final = build(config, out)
        second = server.stats()
    assert final.complete and final.pending == 0
    assert _digests(out) == _digests(clean)  # the rows of a clean build, byte for byte
    asked_again = set(second["by_key"]) & (received | set(first["ok_keys"]))
    assert not asked_again, "a reply already received was requested again"


def _cli_build(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stgr_builder.cli", "build", str(config), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_one_build_per_folder_and_only_into_its_own_folder(tmp_path_factory, tmp_path):
    source = small_source(tmp_path_factory)
    config = write_config(source, "owned")
    out = tmp_path / "out"
    procs = [_cli_build(config, out), _cli_build(config, out)]
    outcomes = sorted((proc.wait(timeout=300), *proc.communicate()) for proc in procs)
    (ok, _, _), (refused, _, err) = outcomes
    assert (ok, refused) == (0, 2), outcomes
    line = err.strip()
    assert "\n" not in line and "is being built by pid" in line and " since " in line, err
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0
    assert not json.loads((out / "manifest.json").read_text()).get("pending")

    # Another config is another build: refused, unless --overwrite.
    other = write_config(source, "other", verify={"max_box_area": 0.7})
    with pytest.raises(StgrError, match=r"holds build \w+, not this config's build"):
        build(other, out)
    # A folder with files no build made is refused, and --overwrite deletes none of them.
    mine = tmp_path / "mine"
    (mine / "stgr_cot").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(StgrError, match=r"holds files a stgr build did not make \(notes.txt\)"):
        build(config, mine)
    # Shard files no record lists would be read as rows: refused even with --overwrite.
    (mine / "stgr_cot" / "part-00042.parquet").write_bytes(b"not yours")
    with pytest.raises(StgrError, match=r"shard files no stgr record lists \(stgr_cot/part-00042.parquet\)"):
        build(config, mine, overwrite=True)
    (mine / "stgr_cot" / "part-00042.parquet").rename(mine / "part-00042.parquet")
    build(config, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine"
    assert (mine / "part-00042.parquet").read_bytes() == b"not yours"


def _pad_mp4(path: Path, size: int) -> None:
    """Append a top-level ``free`` box so the file is ``size`` bytes (players skip it)."""
    extra = size - path.stat().st_size
    assert extra >= 8
    with open(path, "ab") as handle:
        handle.write(struct.pack(">I", extra) + b"free" + bytes(extra - 8))


def test_changed_media_are_built_again_and_moved_media_are_not(tmp_path_factory, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(small_source(tmp_path_factory), source, ignore=shutil.ignore_patterns("*.yaml"))
    videos = source / "media" / "videos"
    v0, v1 = videos / "v000.mp4", videos / "v001.mp4"
    replacement = tmp_path / "replacement.mp4"
    shutil.copy(v1, replacement)
    size = max(v0.stat().st_size, replacement.stat().st_size) + 64
    _pad_mp4(v0, size)
    _pad_mp4(replacement, size)
    config = write_config(source, "media")
    out = tmp_path / "out"
    build(config, out)

    # The same bytes in another folder (config and media moved): no stage runs again.
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    moved_config = write_config(moved, "media")
    before = _digests(out)
    build(moved_config, out)
    assert _digests(out) == before
    for record in (out / "_progress").glob("shard-*.json"):
        record.unlink()  # make every shard run its samples: each stage must find them stored
    manifest = build(moved_config, out)
    assert _digests(out) == before
    for step in manifest.stats:
        if step.step in ("probe", "sample", "detect", "annotate"):
            assert step.resumed == step.seen > 0, step

    # v000 replaced by other content of the same size, its mtime restored (cp -p, rsync -a).
    stat = v0.stat()
    shutil.copyfile(replacement, v0)
    os.utime(v0, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (v0.stat().st_size, v0.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    build(config, out)
    fresh = tmp_path / "fresh"
    build(config, fresh)
    assert _digests(out) == _digests(fresh)
    assert _digests(out) != before


def test_one_budget_across_the_dask_workers_of_a_run(tmp_path_factory, tmp_path, monkeypatch, api_key):
    from stgr_builder.flows.build import flow_runner

    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "warning")
    source = small_source(tmp_path_factory)
    config = write_config(
        source,
        "budget-dask",
        annotator={**LLM, "concurrency": 2, "budget": 10},
        sharding={"samples_per_shard": 6, "workers": 2},
    )
    with serve_llm(latency_ms=30) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        manifest = build(config, tmp_path / "out", runner=flow_runner, sharding_runner="dask")
        sent = server.stats()["total"]
    planned = json.loads((tmp_path / "out" / "_progress" / "plan.json").read_text())["shards"]
    assert planned >= 4  # several shard tasks on the two workers
    assert not manifest.complete and manifest.pending_reasons.get("budget")
    assert sent <= 10, sent  # counted in one ledger before sending: never more than the budget
