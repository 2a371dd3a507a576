"""A build is resolved once (``executor.resolve``): the detector's weights are hashed and the
prompts read one time per build, not again per shard and in ``finalize``; what is resolved
pickles (Dask workers get it with the job), and both jobs finish through one ``finish``."""

from __future__ import annotations

import pickle

import pytest

from stgr_builder.annotate import prompts as prompt_module
from stgr_builder.detect import yolo
from stgr_builder.executor import in_process, run
from stgr_builder.pipeline import build_job
from stgr_builder.reannotate import prepare

from helpers.small_demo import small_build, small_source, write_config

pytestmark = pytest.mark.slow


def test_a_build_hashes_its_weights_and_reads_its_prompt_once(tmp_path_factory, tmp_path, monkeypatch):
    hashed: list[str] = []
    read: list[str] = []
    real_hash, real_check = yolo.weights_hash, prompt_module.check_prompt
    monkeypatch.setattr(yolo, "weights_hash", lambda path: hashed.append(str(path)) or real_hash(path))
    monkeypatch.setattr(prompt_module, "check_prompt", lambda name: read.append(name) or real_check(name))
    config = write_config(small_source(tmp_path_factory), "resolved", sharding={"samples_per_shard": 3})
    job = build_job(config, tmp_path / "out")
    assert pickle.loads(pickle.dumps(job.resolved)) == job.resolved  # travels to Dask workers
    manifest = run(job, in_process)
    assert len({f.path.split("/")[-1] for f in manifest.shards}) >= 3  # several shard tasks ran
    assert len(hashed) == 1 and read == ["template-cot"]
    assert manifest.detector["weights_hash"] == job.resolved.detector["weights_hash"]


def test_a_reannotation_finishes_like_a_build_and_drops_its_budget_ledger(tmp_path_factory, tmp_path):
    _, base = small_build(tmp_path_factory)
    job = prepare(base, where="task = 'temporal QA'", prompt="template-cot", out=tmp_path / "v2")
    ledger = job.resolved.budget_ledger
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"requests": 3, "tokens": 0}')  # what a capped LLM run leaves
    manifest = run(job)
    assert manifest.reannotation is not None and manifest.complete
    assert not ledger.exists()  # the build always removed its run's ledger; now both jobs do
