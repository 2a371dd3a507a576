"""Resume per sample: a build SIGKILLed at five random moments and resumed each time ends with
the rows of an uninterrupted build and asks the LLM for no reply twice; a changed config
reruns only the stages it touches; `stgr verify` holds a folder against its manifest."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from small_demo import copy_build, small_source, write_config
from stgr_builder.annotate.cache import ResponseCache
from stgr_builder.annotate.server import serve_llm
from stgr_builder.audit import query
from stgr_builder.cli import app
from stgr_builder.errors import StgrError
from stgr_builder.pipeline import build

pytestmark = pytest.mark.slow

_SCRIPT = ("import sys; from pathlib import Path; from stgr_builder.pipeline import build; "
           "build(Path(sys.argv[1]), Path(sys.argv[2]))")


def _digests(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def _cache_files(out: Path) -> int:
    folder = out / "_cache"
    return sum(1 for _ in folder.rglob("*.json")) if folder.is_dir() else 0


def test_five_sigkills_at_random_moments_end_with_the_uninterrupted_rows(tmp_path, tmp_path_factory, monkeypatch):
    source = small_source(tmp_path_factory)
    # One shard: only per-sample resume can save work here.
    config = write_config(source, "kill5", annotator={"backend": "openai", "model": "stgr-dry-run",
                                                      "prompt": "stgr-cot-llm", "concurrency": 2, "timeout": 5.0},
                          sharding={"samples_per_shard": 64})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-resume-0123456789")
    reference, out = tmp_path / "reference", tmp_path / "killed"
    with serve_llm(latency_ms=40) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(config, reference)
        wanted = set(server.stats()["by_key"])
        server.reset_stats()
        total = _cache_files(reference)

        rng = random.Random(5)
        targets = sorted(rng.sample(range(2, total - 4), 5))
        asked: dict[str, int] = {}

        def paid_once(run):
            received = ResponseCache(out).keys()  # replies already on disk before this run
            server.reset_stats()
            result = run()
            now = server.stats()["by_key"]
            assert not set(now) & received, "a reply already received was requested again"
            for key, count in now.items():
                asked[key] = asked.get(key, 0) + count
            return result

        for target in targets:
            paid_once(lambda: _run_and_kill(config, out, target, rng))

        manifest = paid_once(lambda: build(config, out))
    assert _digests(out) == _digests(reference)  # same ids, same contents, byte for byte
    assert set(asked) == wanted  # every reply the build needs was asked for
    # A key asked twice was in flight at a kill (no reply received); at most `concurrency` per kill.
    assert sum(asked.values()) - len(asked) <= 2 * len(targets)
    steps = {s.step: s for s in manifest.stats}
    # the last run took finished samples from the stage store, not from finished shards
    assert steps["probe"].resumed == steps["probe"].seen > 0
    assert steps["annotate"].resumed > 0
    assert manifest.llm.requests == len(wanted)  # cost counted once per reply, however interrupted


def _run_and_kill(config: Path, out: Path, target: int, rng: random.Random) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(config), str(out)], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while _cache_files(out) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the build ended before the kill at {target} files"
    assert not (out / "manifest.json").exists()


def test_a_changed_setting_reruns_only_the_stages_it_decides(tmp_path, tmp_path_factory):
    config, out = copy_build(tmp_path, tmp_path_factory)
    before = query(out, "SELECT DISTINCT provenance.build_id FROM cot").rows
    changed = write_config(config.parent, "changed", verify={"max_box_area": 0.7})
    with pytest.raises(StgrError, match="holds build .* pass --overwrite"):
        build(changed, out)  # another config is another build: the folder is not its to write
    manifest = build(changed, out, overwrite=True)
    steps = {s.step: s for s in manifest.stats}
    for step in ("probe", "sample", "detect"):
        assert steps[step].resumed == steps[step].seen > 0, step
    assert steps["annotate"].resumed == 0 and steps["annotate"].seen > 0
    after = query(out, "SELECT DISTINCT provenance.build_id FROM cot").rows
    assert after == [(manifest.build_id,)] and after != before  # every shard rewritten by the new build


def test_verify_holds_the_folder_against_its_manifest(tmp_path, tmp_path_factory):
    runner = CliRunner()
    config, out = copy_build(tmp_path, tmp_path_factory)
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    # A half-written shard (the writer's temp name) is invisible to readers and to verify.
    (out / "stgr_cot" / ".part-00000.parquet.0123abcd.tmp").write_bytes(b"PAR1 half")
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    rows = query(out, "SELECT count(*) FROM cot").rows[0][0]
    assert rows == json.loads((out / "manifest.json").read_text())["counts"]["stgr_cot"]

    frame = out / query(out, "SELECT key_frames[1].path FROM cot LIMIT 1").rows[0][0]
    frame.unlink()
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code != 0 and "key-frame" in str(result.exception)

    config2, out2 = copy_build(tmp_path / "b", tmp_path_factory)
    shard = out2 / "stgr_rl" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    (out2 / "rejects" / "part-00099.parquet").write_bytes(b"stray")
    result = runner.invoke(app, ["verify", str(out2)])
    assert result.exit_code != 0
    text = str(result.exception)
    assert "sha256" in text and "2 problems" in text
