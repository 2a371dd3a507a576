"""The full-size rehearsal's recipe (bench/full_size.py) at a tiny scale: every row it builds
passes every consistency rule, and its rows per task are exactly the recipe's."""

from __future__ import annotations

from collections import Counter

import duckdb
import pytest

from bench.full_size import RECIPE, expected_rows, make_pool, scaled_recipe, write_recipe
from stgr_builder.core.arrow import table_to_rows
from stgr_builder.dryrun.demo import load_truth
from stgr_builder.models import CotRow, RlRow, Task
from stgr_builder.pipeline import build, context
from stgr_builder.sources import ingest
from stgr_builder.verify import check_row

SCALE = 0.002


def test_the_recipe_has_the_released_sizes_and_mix():
    rows = expected_rows(1.0)
    assert sum(rows["cot"].values()) == 31_166
    assert sum(rows["rl"].values()) == 37_231
    assert rows["cot"] == Counter(
        {
            Task.SPATIO_TEMPORAL.value: 7_047,
            Task.TEMPORAL.value: 4_119,
            Task.VISUAL.value: 5_000,
            Task.VIDEO_MCQ.value: 13_000,
            Task.VIDEO_FREE.value: 2_000,
        }
    )
    assert rows["rl"] == Counter(
        {
            Task.SPATIO_TEMPORAL.value: 12_047,
            Task.TEMPORAL.value: 2_280,
            Task.TEMPORAL_MCQ.value: 2_904,
            Task.VISUAL.value: 5_000,
            Task.VIDEO_MCQ.value: 13_000,
            Task.VIDEO_FREE.value: 2_000,
        }
    )
    assert sum(RECIPE.values()) == 39_070


@pytest.mark.slow
def test_a_tiny_rehearsal_builds_the_recipe_exactly_and_every_row_passes(tmp_path):
    pool = tmp_path / "pool"
    make_pool(pool, n_videos=6, n_images=3)
    config = write_recipe(pool, tmp_path / "recipe", SCALE, samples_per_shard=64)
    out = tmp_path / "out"
    manifest = build(config, out)
    assert manifest.counts["rejects"] == 0
    assert manifest.counts["samples"] == sum(scaled_recipe(SCALE).values())

    ctx = context(config, out)
    samples, _, _ = ingest(ctx.config, ctx.config_dir)
    by_id = {sample.id: sample for sample in samples}
    durations = {video.path: video.duration for video in load_truth(pool).videos}
    want = expected_rows(SCALE)
    for model, folder, dataset in ((CotRow, "stgr_cot", "cot"), (RlRow, "stgr_rl", "rl")):
        table = duckdb.sql(f"SELECT * FROM read_parquet('{out}/{folder}/*.parquet')").to_arrow_table()
        rows = table_to_rows(table, model)
        assert Counter(row.task.value if hasattr(row.task, "value") else row.task for row in rows) == want[dataset]
        for row in rows:
            sample = by_id[row.id]
            violations = check_row(
                row, duration=durations.get(row.video_path), span=sample.span, gold_answer=sample.answer
            )
            assert violations == [], (dataset, row.id, violations)
