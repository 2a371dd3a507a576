"""Resume per sample: a build SIGKILLed at a random moment of each stage and resumed each time
ends with the rows of an uninterrupted build and asks the LLM for no reply twice; a changed config
reruns only the stages it touches; `stgr verify` holds a folder against its manifest."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from stgr_builder.annotate.cache import ResponseCache
from stgr_builder.audit import query
from stgr_builder.cli import app
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.errors import StgrError
from stgr_builder.pipeline import build
from stgr_builder.testing import chaos

from helpers import seeded
from helpers.small_demo import copy_build, small_source, write_config

pytestmark = pytest.mark.slow


def test_sigkills_in_every_stage_end_with_the_uninterrupted_rows(tmp_path, tmp_path_factory, monkeypatch):
    """The chaos test: SIGKILLs of a build subprocess at seeded random moments, each followed by
    the next run; the last run finishes. The shard files are byte-identical to an uninterrupted
    build's, and no reply received is asked for again. The suite kills in annotate and in one
    other stage the seed draws (probe, sample, detect, write); ``bench/all_cases.py`` kills in every
    stage, and ``bench/chaos.py`` runs more rounds."""
    source = small_source(tmp_path_factory)
    # Three shards of ~12 samples: kills land inside shards and between them.
    config = write_config(
        source,
        "kill5",
        annotator={
            "backend": "openai",
            "judge": {"enabled": False},  # on by default for openai; not what this checks
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "concurrency": 2,
            "timeout": 5.0,
        },
        sharding={"samples_per_shard": 12},
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-resume-0123456789")
    reference, out = tmp_path / "reference", tmp_path / "killed"
    with serve_llm(latency_ms=40) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        build(config, reference)
        wanted = set(server.stats()["by_key"])
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

        rng = random.Random(seeded.SEED)
        # Always in annotate (paid replies in flight), and in one other stage the seed draws.
        others = seeded.sample([s for s in chaos.KILL_STAGES if s != "annotate"], 1, salt="sigkill")
        stages = [s for s in chaos.KILL_STAGES if s in {"annotate", *others}]
        landed = [
            paid_once(lambda stage=stage: chaos.run_and_kill(config, out, stage, reference, rng)) for stage in stages
        ]
        manifest = paid_once(lambda: build(config, out))
    assert sum(what.startswith("killed") for what in landed) >= len(stages) - 1, landed
    assert chaos.digests(out) == chaos.digests(reference), landed  # same ids, same contents, byte for byte
    assert set(asked) == wanted  # every reply the build needs was asked for
    # A key asked twice was in flight at a kill (no reply received); at most `concurrency` per kill.
    assert sum(asked.values()) - len(asked) <= 2 * len(landed)
    assert manifest.llm.requests == len(wanted)  # cost counted once per reply, however interrupted


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
