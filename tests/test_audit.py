"""The audit: DuckDB views over the shards, a canned summary whose numbers are what was written,
and queries that can only read."""

from __future__ import annotations

import shutil
from pathlib import Path
from statistics import mean

import pytest

from stgr_builder.audit import connect, query, summary
from stgr_builder.core.layout import shard_path
from stgr_builder.errors import StgrError
from stgr_builder.models import (
    CotRow,
    KeyFrame,
    KeyItem,
    PromptRef,
    Provenance,
    Reject,
    RejectCode,
    RlRow,
    Stage,
    StepStats,
    Task,
)
from stgr_builder.shards import write_manifest, write_shard


def _rows(
    id: str,
    task: Task,
    source: str,
    frames: list[tuple[int, float]],
    items: list[tuple[int, str, list[list[float]]]],
    trace: str,
    model: str = "template",
    **media,
):
    fields = dict(
        id=id,
        task=task,
        source=source,
        question=f"question {id}?",
        answer="answer",
        key_frames=[KeyFrame(idx=i, time=t, path=f"kfs/{id}/{i}.jpg") for i, t in frames],
        key_items=[KeyItem(idx=i, name=n, boxes=b) for i, n, b in items],
        provenance=Provenance(
            prompt_name="template-cot",
            prompt_version="v1",
            annotator_model=model,
            detector_name="yolo11n",
            detector_weights_hash="abc",
            build_id="b1",
            detector_score=0.5,
        ),
        **(media or {"video_path": f"v/{id}.mp4"}),
    )
    return CotRow(**fields, reasoning_process=trace), RlRow(**fields)


ROWS = [
    _rows(
        "r1",
        Task.TEMPORAL,
        "TVG_charades",
        [(0, 1.0), (30, 3.0)],
        [(0, "door", [[0.0, 0.0, 0.5, 0.5]]), (30, "door", [[0.2, 0.2, 0.4, 0.6]])],
        "<obj>door</obj><box>[0.0, 0.0, 0.5, 0.5]</box>at<t>1.0</t>s to "
        "<obj>door</obj><box>[0.2, 0.2, 0.4, 0.6]</box>at<t>3.0</t>s",
    ),
    _rows(
        "r2",
        Task.SPATIO_TEMPORAL,
        "STR_activitynet",
        [(50, 2.0)],
        [(50, "man", [[0.1, 0.1, 0.2, 0.3], [0.5, 0.5, 0.9, 0.7]])],
        "<obj>man</obj><box>[0.1, 0.1, 0.2, 0.3]</box><box>[0.5, 0.5, 0.9, 0.7]</box>at<t>2.0</t>s",
    ),
    _rows(
        "r3",
        Task.VISUAL,
        "STR_gqa",
        [(0, 0.0)],
        [(0, "cat", [[0.0, 0.0, 0.8, 0.4]])],
        "<obj>cat</obj><box>[0, 0, 512, 192]</box>",
        model="gpt-4o-mini",
        image_path="img/cat.jpg",
        image_size=[640, 480],
    ),
]
REJECTS = [
    Reject(id="x1", stage=Stage.VERIFY, code=RejectCode.BOX_TOO_LARGE, message="91%"),
    Reject(id="x2", stage=Stage.VERIFY, code=RejectCode.BOX_TOO_LARGE, message="85%"),
    Reject(id="x3", stage=Stage.PROBE, code=RejectCode.MEDIA_CORRUPT, message="moov atom not found"),
]


@pytest.fixture
def built(tmp_path) -> Path:
    """Two shards and a manifest."""
    shards = {0: (ROWS[:2], REJECTS[:2]), 1: (ROWS[2:], REJECTS[2:])}
    results = [
        write_shard(
            tmp_path,
            shard,
            cot_rows=[c for c, _ in rows],
            rl_rows=[r for _, r in rows],
            rejects=rejects,
            sample_ids=[c.id for c, _ in rows] + [r.id for r in rejects],
            stats=[StepStats(step="verify", seen=len(rows), kept=len(rows))],
        )
        for shard, (rows, rejects) in shards.items()
    ]
    write_manifest(
        tmp_path,
        build_id="b1",
        code_version="0.1.0",
        config={"name": "t"},
        prompts=[PromptRef(name="template-cot", version="v1")],
        detector={"name": "yolo11n"},
        results=results,
    )
    return tmp_path


def _table(tables, title):
    return next(t for t in tables if t.title == title)


def _boxes():
    return [box for cot, _ in ROWS for item in cot.key_items for box in item.boxes]


def test_views_show_what_was_written(built):
    con = connect(built)
    counts = {view: con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] for view in ("cot", "rl", "rejects")}
    assert counts == {"cot": 3, "rl": 3, "rejects": 3}
    assert con.execute("SELECT image_size FROM cot WHERE id = 'r3'").fetchone()[0] == [640, 480]


def test_a_folder_without_shards_still_has_typed_views(built, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    for view in ("cot", "rl", "rejects"):
        described = [query(root, f"DESCRIBE {view}").rows for root in (built, empty)]
        assert [r[:2] for r in described[0]] == [r[:2] for r in described[1]], view
        assert query(empty, f"SELECT count(*) FROM {view}").rows == [(0,)]
    tables = summary(empty)
    assert _table(tables, "Manifest").rows[0][0] == "manifest.json"
    assert _table(tables, "Rows by task and source").rows == []


def test_a_stray_temp_file_is_never_read(built):
    # A kill between writing and renaming leaves a full Parquet file under a temp name.
    shutil.copy(shard_path(built, "stgr_cot", 0), built / "stgr_cot" / ".part-00002.parquet.0bad.tmp")
    assert query(built, "SELECT count(*) FROM cot").rows == [(3,)]


def test_summary_counts_match_what_was_written(built):
    tables = summary(built)
    by_task = {(d, t, s): n for d, t, s, n in _table(tables, "Rows by task and source").rows}
    assert by_task == {(d, c.task.value, c.source): 1 for c, _ in ROWS for d in ("cot", "rl")}
    assert _table(tables, "Rejects by stage and code").rows == [
        ("verify", "box_too_large", 2),
        ("probe", "media_corrupt", 1),
    ]


def test_summary_box_statistics_match_the_boxes(built):
    boxes = _table(summary(built), "Boxes (normalized)")
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in _boxes()]
    aspects = [(b[2] - b[0]) / (b[3] - b[1]) for b in _boxes()]
    for dataset, count, mean_area, min_area, max_area, mean_aspect in boxes.rows:
        assert count == len(_boxes()) == 5, dataset
        assert mean_area == pytest.approx(mean(areas), abs=1e-4)
        assert (min_area, max_area) == pytest.approx((min(areas), max(areas)), abs=1e-4)
        assert mean_aspect == pytest.approx(mean(aspects), abs=1e-4)


def test_summary_key_frames_traces_and_provenance(built):
    tables = summary(built)
    kf = {row[0]: row[1:] for row in _table(tables, "Key frames per row").rows}
    counts = [len(c.key_frames) for c, _ in ROWS]
    assert kf["cot"][:4] == pytest.approx((3, min(counts), mean(counts), max(counts)), abs=0.01)
    assert kf["rl"][-1] == pytest.approx(mean([2.0, 0.0, 0.0]), abs=0.01)  # time spread per row

    traces = {row[0]: row[1:] for row in _table(tables, "Trace length (cot)").rows}
    r1 = ROWS[0][0].reasoning_process
    assert traces["temporal QA"] == (1, len(r1), len(r1), len(r1), 2.0, 2.0)
    assert traces["temporal-spatial free-form QA"][-2:] == (1.0, 2.0)

    provenance = _table(tables, "Provenance")
    models = {(row[0], row[3]): row[7] for row in provenance.rows}
    assert models == {
        ("cot", "template"): 2,
        ("cot", "gpt-4o-mini"): 1,
        ("rl", "template"): 2,
        ("rl", "gpt-4o-mini"): 1,
    }
    assert provenance.columns[:2] == ["dataset", "prompt_name"]


def test_summary_reports_the_manifest_and_healthy_checks(built):
    tables = summary(built)
    manifest = dict(_table(tables, "Manifest").rows)
    assert manifest["build_id"] == "b1" and manifest["shards"] == 2
    assert manifest["rows: stgr_cot"] == 3 and manifest["rows: rejects"] == 3
    assert manifest["prompts"] == "template-cot@v1"
    checks = _table(tables, "Checks")
    assert checks.rows and all(ok for *_, ok in checks.rows), checks.rows


def test_checks_catch_an_extra_shard_and_a_corrupted_file(built):
    shutil.copy(shard_path(built, "stgr_cot", 0), shard_path(built, "stgr_cot", 5))
    path = shard_path(built, "rejects", 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    checks = {name: (expected, actual, ok) for name, expected, actual, ok in _table(summary(built), "Checks").rows}
    assert checks["duplicate ids in cot"] == (0, 2, False)
    assert checks["rows in cot = manifest"] == (3, 5, False)
    assert checks["shard files not in the manifest"] == (0, 1, False)
    assert checks["manifest files missing or with another sha256"] == (0, 1, False)
    assert checks["rows in rl = manifest"][2] is True


@pytest.mark.parametrize(
    "sql",
    [
        "DROP VIEW cot",
        "COPY (SELECT * FROM cot) TO 'out.csv'",
        "INSERT INTO cot SELECT * FROM cot",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; DROP VIEW cot",
        "ATTACH 'other.db'",
        "SET enable_external_access = true",
        "EXPLAIN ANALYZE SELECT 1",
    ],
)
def test_query_refuses_anything_but_a_query(built, sql):
    with pytest.raises(StgrError, match="read-only|exactly one"):
        query(built, sql)
    assert query(built, "SELECT count(*) FROM cot").rows == [(3,)]
    assert not (built / "out.csv").exists()


def test_query_runs_selects_and_cannot_read_outside_the_dataset(built):
    result = query(built, "WITH t AS (SELECT task, count(*) AS n FROM rl GROUP BY task) SELECT * FROM t ORDER BY task")
    assert result.columns == ["task", "n"] and len(result.rows) == 3
    assert query(built, "FROM rejects SELECT code ORDER BY id").rows == [
        ("box_too_large",),
        ("box_too_large",),
        ("media_corrupt",),
    ]
    with pytest.raises(StgrError, match="query failed"):
        query(built, "SELECT * FROM read_text('/etc/hostname')")
    with pytest.raises(StgrError, match="query failed"):
        query(built, "SELECT no_such_column FROM cot")
