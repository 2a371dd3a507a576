"""Recipes: the shipped configs reproduce the released mixes; ``stgr plan`` over fixture
sources counts exactly the rows the following build writes; the dataset card shows them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stgr_builder.audit import connect, summary
from stgr_builder.audit.card import PAPER_SHARES, category_shares
from stgr_builder.cli import app
from stgr_builder.models import AnnotatorConfig, DetectorConfig, Plan, Task
from stgr_builder.pipeline import build
from stgr_builder.planning import make_plan
from stgr_builder.recipes import available_recipes, resolve_config, write_config

from helpers.recipe_data import make_data_root

#: The judge is on by default for the openai backend; these tests check other things.
NO_JUDGE = {"judge": {"enabled": False}}

RELEASED = {
    "stgr-cot-30k": (
        "cot",
        31166,
        {
            Task.SPATIO_TEMPORAL: 7047,
            Task.TEMPORAL: 4119,
            Task.VISUAL: 5000,
            Task.VIDEO_MCQ: 13000,
            Task.VIDEO_FREE: 2000,
        },
    ),
    "stgr-rl-36k": (
        "rl",
        37231,
        {
            Task.SPATIO_TEMPORAL: 12047,
            Task.TEMPORAL: 2280,
            Task.TEMPORAL_MCQ: 2904,
            Task.VISUAL: 5000,
            Task.VIDEO_MCQ: 13000,
            Task.VIDEO_FREE: 2000,
        },
    ),
}
# Which task each source of a recipe becomes (from its adapter options).
_TASK_OPTION = {
    "spatio_temporal": Task.SPATIO_TEMPORAL,
    "temporal": Task.TEMPORAL,
    "temporal_mcq": Task.TEMPORAL_MCQ,
    "mcq": Task.VIDEO_MCQ,
    "free": Task.VIDEO_FREE,
}


def _task_of(source) -> Task:
    if "task" in source.options:
        return Task(source.options["task"])
    if source.adapter == "gqa":
        return Task.VISUAL
    if source.adapter == "videoespresso":
        return Task.SPATIO_TEMPORAL
    (task,) = source.options["tasks"]
    return _TASK_OPTION[task]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_recipe_reproduces_the_released_counts(name):
    assert name in available_recipes()
    config, _, _ = resolve_config(name, data_root="/data")
    dataset, total, per_task = RELEASED[name]
    assert all(s.sample is not None and [d.value for d in s.datasets] == [dataset] for s in config.sources)
    assert len({s.name for s in config.sources}) == len(config.sources)
    assert sum(s.sample for s in config.sources) == total
    counts = Counter()
    for source in config.sources:
        counts[_task_of(source)] += source.sample
    assert dict(counts) == per_task
    assert config.sources[0].path == "/data/plm_rdcap/rdcap_train.jsonl"
    # The paper's category shares do not follow exactly from its own per-task counts; the
    # card prints both. Here: within 3 points of the paper's.
    shares = category_shares({t.value: n for t, n in counts.items()})
    for category, paper in PAPER_SHARES[f"stgr_{dataset}"].items():
        assert abs(shares[category] - paper) < 3.0, (category, shares[category], paper)


def test_recipe_needs_its_data_root(monkeypatch):
    monkeypatch.delenv("STGR_DATA", raising=False)
    result = CliRunner().invoke(app, ["plan", "stgr-cot-30k"])
    assert result.exit_code != 0 and "STGR_DATA" in str(result.exception)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data_root(tmp_path_factory.mktemp("recipes"))


def _rows(root: Path) -> Counter:
    con = connect(root)
    try:
        return Counter(
            {
                (dataset, source, task): n
                for view, dataset in (("cot", "cot"), ("rl", "rl"))
                for source, task, n in con.execute(f"SELECT source, task, count(*) FROM {view} GROUP BY ALL").fetchall()
            }
        )
    finally:
        con.close()


@pytest.mark.parametrize("name", sorted(RELEASED))
@pytest.mark.slow  # a build per recipe
def test_plan_counts_equal_the_build_over_fixtures(name, data_root, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "plan",
            name,
            "--data-root",
            str(data_root),
            "--scale",
            "0.001",
            "--price-in",
            "2.5",
            "--price-out",
            "10",
            "--json",
            str(tmp_path / "p.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Plan: rows per dataset, source and task" in result.output and "LLM requests" in result.output
    plan = Plan.model_validate_json((tmp_path / "p.json").read_text())
    assert plan.estimate.requests == sum(c.rows for c in plan.counts) > 0
    assert plan.estimate.images >= plan.estimate.requests and plan.estimate.cost > 0
    assert any(s.filtered for s in plan.sources) and any(s.shortfall for s in plan.sources)
    read = {s.source: s.read for s in plan.sources}
    assert read["videor1_mcq"] + read["videor1_free"] == 3  # Video-R1 split by task; its image item left out
    if name == "stgr-cot-30k":
        assert read["STR_coin"] == 2  # COIN: the training subset's steps only

    # The same recipe built offline: template annotator and the shipped demo detector.
    config, config_dir, _ = resolve_config(name, data_root=data_root, scale=0.001)
    config = config.model_copy(update={"annotator": AnnotatorConfig(), "detector": DetectorConfig(imgsz=160)})
    config_path = write_config(config, tmp_path / "CONFIG.yaml")
    planned = make_plan(config, config_dir)
    assert Counter({(c.dataset.value, c.source, c.task.value): c.rows for c in planned.counts}) == Counter(
        {(c.dataset.value, c.source, c.task.value): c.rows for c in plan.counts}
    )
    out = tmp_path / "out"
    manifest = build(config_path, out)
    rows = _rows(out)
    with connect(out) as con:
        lost = Counter(
            dict(
                con.execute(
                    "SELECT source, count(*) FROM rejects "
                    "WHERE stage IN ('sample', 'detect', 'track', 'annotate', 'verify') GROUP BY ALL"
                ).fetchall()
            )
        )
    # Every planned sample reaches annotation (nothing is filtered after the plan): per source,
    # the build's rows plus what the checks, annotation and verification rejected (offline: the
    # demo detector finds no evidence for some spatio-temporal samples, confirms no gold box of the
    # fixtures' real clips) are the plan's rows.
    built = Counter()
    for (_, source, _), n in rows.items():
        built[source] += n
    assert {s.source: s.rows for s in planned.sources if s.rows} == dict(built + lost)
    assert all(key in {(c.dataset.value, c.source, c.task.value) for c in planned.counts} for key in rows)
    assert sum(n for (_, source, _), n in rows.items() if not lost[source]) > 0
    for key, n in rows.items():  # sources annotation lost nothing from: exactly the plan's count
        if not lost[key[1]]:
            assert n == next(c.rows for c in planned.counts if (c.dataset.value, c.source, c.task.value) == key)

    # plan.json beside the shards, and the audit's estimate-vs-actual table.
    assert json.loads((out / "plan.json").read_text())["counts"] == json.loads(planned.model_dump_json())["counts"]
    table = next(t for t in summary(out) if t.title == "Plan: estimate vs actual")
    dataset = RELEASED[name][0]
    assert (f"rows: stgr_{dataset}", planned.rows(dataset), manifest.counts[f"stgr_{dataset}"]) in table.rows

    # The dataset card.
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and f"config_name: stgr_{dataset}" in card
    assert f"path: stgr_{dataset}/part-*.parquet" in card
    for (_, source, task), n in rows.items():
        assert f"| {task} | {source} | {n} |" in card
    paper = PAPER_SHARES[f"stgr_{dataset}"]
    assert "| temporal |" in card and f"{paper['temporal']:.1f}%" in card
    assert 'load_dataset("parquet"' in card and "## Rejects by reason" in card and "## Provenance" in card


def test_plan_source_override_and_skip_missing(data_root, tmp_path):
    other = tmp_path / "tacos.json"
    other.write_text((data_root / "tacos" / "train.json").read_text())
    result = CliRunner().invoke(
        app,
        [
            "plan",
            "stgr-cot-30k",
            "--data-root",
            str(tmp_path / "nowhere"),
            "--skip-missing",
            "--scale",
            "0.001",
            "--source",
            f"TVG_tacos={other},{data_root / 'tacos' / 'videos'}",
            "--json",
            str(tmp_path / "p.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    plan = Plan.model_validate_json((tmp_path / "p.json").read_text())
    assert [s.source for s in plan.sources] == ["TVG_tacos"] and plan.sources[0].rows == 2


@pytest.mark.slow  # a build with the LLM (~20 s)
def test_estimate_beside_the_measured_llm_work(tmp_path, monkeypatch):
    """The plan's LLM estimate against a build with the openai backend (the shipped dry-run
    server): requests and images exactly, tokens within a factor of two."""
    import yaml

    from stgr_builder.dryrun.demo import demo_config, generate_demo
    from stgr_builder.dryrun.server import serve_llm
    from stgr_builder.pipeline import load_config

    generate_demo(tmp_path, seed=0, n_videos=2, n_images=1)
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "timeout": 5.0,
            "max_retries": 1,
            **NO_JUDGE,
        }
    )
    config["sources"][0]["sample"] = 6
    # The dry-run server counts characters / 4 + 85 per image: the same rule, without tiles.
    config["estimate"] = {"image_tokens_tile": 0, "completion_tokens": 100}
    path = tmp_path / "CONFIG.yaml"
    path.write_text(yaml.safe_dump(config))
    planned = make_plan(load_config(path), tmp_path)
    assert planned.sources[0].rows == 6 and planned.estimate.requests == 6
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        manifest = build(path, tmp_path / "out")
    table = next(t for t in summary(tmp_path / "out") if t.title == "Plan: estimate vs actual")
    got = {figure: (estimate, actual) for figure, estimate, actual in table.rows}
    assert got["LLM requests"] == (6, manifest.llm.requests)
    assert got["images sent"] == (planned.estimate.images, planned.estimate.images)
    est, actual = got["prompt tokens"]
    assert 0.75 * actual <= est <= 1.25 * actual, got
