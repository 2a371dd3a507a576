"""annotator.mode: batch against `stgr serve-llm`'s Batch API: no online chat request for
annotation, rows identical to an online build's; a build that returns after submitting
(--no-wait) and is run again reattaches to its batch and submits nothing twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stgr_builder.cli import app
from stgr_builder.dryrun.demo import demo_config, generate_demo
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.pipeline import build

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}

pytestmark = pytest.mark.slow


def _config(source: Path, name: str, **annotator) -> Path:
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "batch_poll_s": 0.1,
            **NO_JUDGE,
            **annotator,
        }
    )
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _shards(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for folder in ("stgr_cot", "stgr_rl", "rejects")
        for p in sorted((out / folder).glob("part-*.parquet"))
    }


def test_batch_mode_rows_equal_online_rows_and_nothing_is_submitted_twice(tmp_path, monkeypatch):
    """The judge on: its requests go in batches too, after the annotation batch is collected
    (a shard waiting on either is pending; each rerun collects what it can and submits the
    rest), and no request, annotation or judge, goes online."""
    source = tmp_path / "src"
    generate_demo(source, seed=0, n_videos=2, n_images=1)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch-0123456789")
    judge = {"judge": {"enabled": True}}
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        online = build(_config(source, "online", **judge), tmp_path / "online")
        asked_online, judged_online = server.stats()["total"], server.stats()["by_schema"]["crop_verdicts"]
    assert online.complete and asked_online > judged_online > 0

    out = tmp_path / "batch"
    config = _config(source, "batch", mode="batch", batch_max_requests=10, **judge)
    with serve_llm(batch_delay_s=1.0) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        first = CliRunner().invoke(app, ["build", str(config), "--out", str(out), "--no-wait"])
        assert first.exit_code == 0, first.output
        assert "batches pending; run again to collect" in first.output
        submitted = server.stats()["batches"]
        assert submitted >= 2 and server.stats()["total"] == 0  # split by batch_max_requests; nothing online
        assert json.loads((out / "manifest.json").read_text())["complete"] is False
        from stgr_builder.annotate import pending_batches

        assert pending_batches(out) == (asked_online - judged_online, submitted)  # the annotation requests
        records = list((out / "_cache" / "batches").glob("*.json"))
        assert records and all(c["batch_id"] for r in records for c in json.loads(r.read_text())["chunks"])

        # The annotation batches finish (a fixed sleep was flaky: answering a batch's lines takes
        # the server a while on a loaded machine, and a batch still running is collected later).
        deadline = time.monotonic() + 120
        while server.stats()["batches_running"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.stats()["batches_running"] == 0
        again = CliRunner().invoke(app, ["build", str(config), "--out", str(out), "--no-wait"])
        assert again.exit_code == 0 and "batches pending" in again.output, again.output
        with_judge = server.stats()["batches"]
        assert with_judge > submitted and server.stats()["total"] == 0  # the judge's batch, nothing online
        assert pending_batches(out)[0] == judged_online

        second = build(config, out)  # reattaches, waits, collects
        stats = server.stats()
    assert second.complete
    assert stats["batches"] == with_judge, _batch_records(out)  # nothing submitted twice
    assert stats["batch_lines"] == asked_online and stats["total"] == 0  # each request once, none online
    assert _shards(out) == _shards(tmp_path / "online")  # the online build's rows, byte for byte
    from stgr_builder.annotate import batch_progress, pending_batches

    assert batch_progress(out) == (asked_online, asked_online) and pending_batches(out) == (0, 0)


def _jobs(root: Path):
    """The batch jobs of a shard under ``root``, as the unit tests below drive them."""
    from stgr_builder.annotate.batch import BatchJobs

    return BatchJobs(root, max_requests=10, max_bytes=1 << 20, poll_s=0.05)


def _body(text: str) -> dict:
    """A chat completion body asking ``text``."""
    return {"model": "stgr-dry-run", "messages": [{"role": "user", "content": text}]}


def _batch_records(out: Path) -> list[list[tuple]]:
    """Each record's chunks: batch id, requests, collected (a failure names what was submitted)."""
    return [
        [(c["batch_id"], len(c["keys"]), c.get("collected")) for c in json.loads(r.read_text())["chunks"]]
        for r in sorted((out / "_cache" / "batches").glob("*.json"))
    ]


def test_plan_estimates_batch_prices(tmp_path):
    source = tmp_path / "src"
    generate_demo(source, seed=0, n_videos=1, n_images=1)
    config = _config(source, "plan")
    costs = {}
    for name, extra in (("online", []), ("batch", ["--batch-discount", "0.5"])):
        result = CliRunner().invoke(
            app,
            [
                "plan",
                str(config),
                "--price-in",
                "2.5",
                "--price-out",
                "10",
                "--json",
                str(tmp_path / f"{name}.json"),
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        costs[name] = json.loads((tmp_path / f"{name}.json").read_text())["estimate"]["cost"]
    assert costs["online"] > 0 and costs["batch"] == pytest.approx(costs["online"] / 2, abs=1e-4)


def test_a_batch_submitted_before_a_kill_is_found_again_not_resubmitted(tmp_path, monkeypatch):
    """Killed after the provider created the batch but before its id was recorded: the next run
    finds it by its metadata tag."""
    from stgr_builder.annotate.batch import BATCH_DIR, BatchPending

    bodies = {
        f"key-{i}": {"model": "stgr-dry-run", "messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(3)
    }
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with serve_llm(batch_delay_s=0.3) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        with pytest.raises(BatchPending, match="3 requests in 1 batches pending"):
            _jobs(tmp_path).run(bodies, wait=False)
        [record_path] = (tmp_path / BATCH_DIR).glob("*.json")
        record = json.loads(record_path.read_text())
        record["chunks"][0]["batch_id"] = None  # as if killed before the id was written
        record_path.write_text(json.dumps(record))
        jobs = _jobs(tmp_path)
        replies = jobs.run(bodies, wait=True)
        assert server.stats()["batches"] == 1 and jobs.submitted == 0
    assert sorted(replies) == sorted(bodies) and {status for status, _ in replies.values()} == {200}


def test_requests_in_an_uncollected_batch_are_never_submitted_again(tmp_path, monkeypatch):
    """A later run that needs more (another budget, new samples) submits only what no batch holds."""
    from stgr_builder.annotate.batch import BatchPending, pending_batches

    def bodies(n):
        return {
            f"key-{i}": {"model": "stgr-dry-run", "messages": [{"role": "user", "content": f"hi {i}"}]}
            for i in range(n)
        }

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with serve_llm(batch_delay_s=0.3) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        budget = iter([True, True, False])  # the first run's budget admits two of three
        with pytest.raises(BatchPending):
            _jobs(tmp_path).run(bodies(3), wait=False, admit=lambda: next(budget))
        assert pending_batches(tmp_path) == (2, 1)
        jobs = _jobs(tmp_path)
        replies = jobs.run(bodies(4), wait=True)
        jobs.collected()
        assert server.stats()["batches"] == 2 and server.stats()["batch_lines"] == 4  # 2, then the other 2
    assert sorted(replies) == sorted(bodies(4)) and pending_batches(tmp_path) == (0, 0)


def test_unusable_replies_are_asked_again_in_follow_up_batch_rounds(tmp_path, monkeypatch):
    source = tmp_path / "src"
    generate_demo(source, seed=0, n_videos=2, n_images=1)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch-0123456789")
    out = tmp_path / "batch"
    with serve_llm(batch_delay_s=0.05, fault_rate=0.3, faults=["schema"]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        manifest = build(_config(source, "reask", mode="batch"), out)
        stats = server.stats()
    assert manifest.complete and stats["total"] == 0  # no online request, re-asks included
    samples = manifest.counts["samples"]
    assert stats["batches"] >= 2 and stats["batch_lines"] > samples  # follow-up rounds
    rows, rejects = manifest.counts["stgr_cot"], manifest.counts["rejects"]
    assert rows + rejects == samples and rows > 0.8 * samples  # most broken replies fixed by a re-ask


def test_a_request_another_shard_collected_meanwhile_is_not_submitted_again(tmp_path, monkeypatch):
    """Two shards share a judge request: one collects and caches it while the other decides to
    send it with a request of its own; the second finds the shared one answered under the
    records' lock (it used to submit it again once the first had marked its chunk collected)."""

    mine, shared = {"k-a": _body("a")}, {"k-shared": _body("shared")}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with serve_llm(batch_delay_s=0.05) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        first = _jobs(tmp_path)
        assert sorted(first.run(shared, wait=True)) == ["k-shared"]
        first.collected()  # the first shard cached the reply and marked its chunk collected
        second = _jobs(tmp_path)
        replies = second.run({**mine, **shared}, wait=True, answered=lambda key: key == "k-shared")
        assert sorted(replies) == ["k-a"] and server.stats()["batch_lines"] == 2  # the shared one sent once
        third = _jobs(tmp_path)
        replies = third.run({"k-b": _body("b"), **shared}, wait=True)  # without the check, as before the fix
        assert sorted(replies) == ["k-b", "k-shared"] and server.stats()["batch_lines"] == 4  # sent twice


def test_a_batch_another_shard_collected_first_is_not_paid_for_again(tmp_path, monkeypatch):
    """Shard A submits its requests, one shared with shard B; B brings A's batch in for the
    shared one and collects it first, caching only its own. A then reattaches to that batch for
    the rest: nothing is submitted twice (B used to mark the batch collected, and A submitted
    its other request again in a new batch: seen under `pytest -n 2`, where the order varies)."""
    from stgr_builder.errors import BatchPending

    a, b, shared = {"k-a": _body("a")}, {"k-b": _body("b")}, {"k-shared": _body("shared")}
    cached: set[str] = set()  # the shards' shared reply cache

    def shard(requests: dict) -> dict:
        jobs = _jobs(tmp_path)
        wanted = {key: value for key, value in requests.items() if key not in cached}
        replies = jobs.run(wanted, wait=True, answered=cached.__contains__)
        cached.update(key for key in replies if key in wanted)  # each shard caches its own
        jobs.collected(cached.__contains__)
        return replies

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with serve_llm(batch_delay_s=0.05) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        with pytest.raises(BatchPending):  # A submits and leaves (--no-wait)
            _jobs(tmp_path).run({**a, **shared}, wait=False)
        assert sorted(shard({**b, **shared})) == ["k-a", "k-b", "k-shared"]  # B waits on A's batch too
        assert "k-a" in shard({**a, **shared})  # A finds its reply in its own batch
        assert server.stats()["batches"] == 2 and server.stats()["batch_lines"] == 3  # each request once
    assert all(collected for record in _batch_records(tmp_path) for _, _, collected in record)  # none left pending
