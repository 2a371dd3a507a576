"""The canned audit: what a researcher looks at first in a built dataset.

>>> [table.title for table in summary(Path("out"))]  # doctest: +SKIP
['Rows by task and source', 'Rejects by stage and code', 'Reject examples (3 per code)',
 'Boxes (normalized)', 'Key frames per row',
 'Trace length (cot)', 'Provenance', 'Manifest', 'LLM cost', 'Checks']
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from stgr_builder.audit.evidence import evidence_tables
from stgr_builder.audit.views import VIEWS, AuditTable, connect
from stgr_builder.core.arrow import DATASETS
from stgr_builder.core.hashing import sha256_file
from stgr_builder.core.layout import load_manifest, read_plan
from stgr_builder.errors import StgrError
from stgr_builder.models import LlmUsage, Manifest

# Rows of both row datasets with a `dataset` column, for per-dataset statistics.
_BOTH = (
    "(SELECT 'cot' AS dataset, * EXCLUDE (reasoning_process) FROM cot UNION ALL BY NAME "
    "SELECT 'rl' AS dataset, * FROM rl)"
)
_DATASETS = "(VALUES ('cot'), ('rl')) AS d(dataset)"

_CANNED: list[tuple[str, str]] = [
    (
        "Rows by task and source",
        f"""
        SELECT dataset, task, source, count(*) AS rows
        FROM {_BOTH} GROUP BY ALL ORDER BY dataset, task, source""",
    ),
    (
        "Rejects by stage and code",
        """
        SELECT stage, code, count(*) AS rejects
        FROM rejects GROUP BY ALL ORDER BY rejects DESC, stage, code""",
    ),
    # A few of each code, first by origin (file:line), so a table of 100,000 rejects says why in a
    # screenful; min_by keeps 3 per code, never all of them.
    (
        "Reject examples (3 per code)",
        """
        SELECT code, count(*) AS rejects,
               array_to_string(min_by(coalesce(origin, id) || ': ' || left(message, 120), coalesce(origin, id), 3),
                               chr(10)) AS examples
        FROM rejects GROUP BY code ORDER BY rejects DESC, code""",
    ),
    # Area and aspect in normalized units (the rows do not carry every frame's pixel size).
    (
        "Boxes (normalized)",
        f"""
        WITH items AS (SELECT dataset, unnest(key_items) AS item FROM {_BOTH}),
             boxes AS (SELECT dataset, unnest(item.boxes) AS b FROM items),
             dims AS (SELECT dataset, b[3] - b[1] AS w, b[4] - b[2] AS h FROM boxes)
        SELECT dataset, count(w) AS boxes,
               round(avg(w * h), 4) AS mean_area, round(min(w * h), 4) AS min_area,
               round(max(w * h), 4) AS max_area, round(avg(w / nullif(h, 0)), 4) AS mean_aspect_w_h
        FROM {_DATASETS} LEFT JOIN dims USING (dataset) GROUP BY dataset ORDER BY dataset""",
    ),
    (
        "Key frames per row",
        f"""
        WITH kf AS (SELECT dataset, len(key_frames) AS n,
                           list_max(list_transform(key_frames, lambda k: k.time))
                         - list_min(list_transform(key_frames, lambda k: k.time)) AS spread
                    FROM {_BOTH})
        SELECT dataset, count(n) AS rows, min(n) AS min_key_frames, round(avg(n), 2) AS mean_key_frames,
               max(n) AS max_key_frames, round(avg(spread), 2) AS mean_time_spread_s
        FROM {_DATASETS} LEFT JOIN kf USING (dataset) GROUP BY dataset ORDER BY dataset""",
    ),
    (
        "Trace length (cot)",
        """
        SELECT task, count(*) AS rows,
               min(len(reasoning_process)) AS min_chars, round(avg(len(reasoning_process)), 1) AS mean_chars,
               max(len(reasoning_process)) AS max_chars,
               round(avg(len(regexp_extract_all(reasoning_process, '<obj>'))), 2) AS mean_obj_mentions,
               round(avg(len(regexp_extract_all(reasoning_process, '<box>'))), 2) AS mean_box_mentions
        FROM cot GROUP BY task ORDER BY task""",
    ),
    (
        "Provenance",
        f"""
        SELECT dataset, provenance.prompt_name AS prompt_name, provenance.prompt_version AS prompt_version,
               provenance.annotator_model AS annotator_model, provenance.detector_name AS detector_name,
               provenance.detector_weights_hash AS detector_weights_hash, provenance.build_id AS build_id,
               count(*) AS rows,
               round(avg(provenance.detector_agreement_iou), 3) AS mean_agreement_iou,
               round(avg(provenance.detector_score), 3) AS mean_detector_score,
               round(avg(provenance.verifier_votes), 2) AS mean_verifier_votes
        FROM {_BOTH} GROUP BY ALL ORDER BY ALL""",
    ),
]

# Inherited labels (verify/inherited.py): one entry per sample (its CoT and RL rows share a lineage).
_SAMPLES = f"(SELECT id, any_value(source) AS source, any_value(provenance.lineage) AS l FROM {_BOTH} GROUP BY id)"

_INHERITED: list[tuple[str, str]] = [
    (
        "Inherited labels by source (spans checked, gold boxes confirmed)",
        f"""
        WITH s AS (SELECT source,
                          count(*) FILTER (WHERE l.span_check IN ('ok', 'refined', 'unverified')) AS span_rows_checked,
                          count(*) FILTER (WHERE l.span_check = 'ok') AS spans_ok,
                          count(*) FILTER (WHERE l.span_check = 'refined') AS spans_refined,
                          count(*) FILTER (WHERE l.span_check = 'unverified') AS spans_unverified,
                          count(*) FILTER (WHERE l.span_check = 'unchecked') AS spans_unchecked,
                          sum(l.gold_confirmed) AS gold_confirmed, sum(l.gold_replaced) AS gold_replaced,
                          sum(l.gold_unconfirmed) AS gold_kept_unconfirmed
                   FROM {_SAMPLES} GROUP BY source),
             r AS (SELECT source,
                          count(*) FILTER (WHERE code IN ('span_imprecise', 'query_not_unique')) AS spans_rejected,
                          count(*) FILTER (WHERE code = 'gold_unconfirmed') AS gold_rejected
                   FROM rejects GROUP BY source)
        SELECT source, coalesce(span_rows_checked, 0) + coalesce(spans_rejected, 0) AS spans_checked,
               coalesce(spans_ok, 0) AS spans_ok, coalesce(spans_refined, 0) AS spans_refined,
               coalesce(spans_rejected, 0) AS spans_rejected, coalesce(spans_unverified, 0) AS spans_unverified,
               coalesce(spans_unchecked, 0) AS spans_unchecked, coalesce(gold_confirmed, 0) AS gold_confirmed,
               coalesce(gold_replaced, 0) AS gold_replaced, coalesce(gold_kept_unconfirmed, 0) AS gold_kept_unconfirmed,
               coalesce(gold_rejected, 0) AS samples_rejected_gold_unconfirmed
        FROM s FULL OUTER JOIN r USING (source) ORDER BY source""",
    ),
    (
        "Span corrections (s): stated span ends against the evidence",
        f"""
        WITH o AS (SELECT l.span_check AS span_check, l.span_offset_s AS off FROM {_SAMPLES}
                   WHERE l.span_offset_s IS NOT NULL)
        SELECT span_check,
               CASE WHEN off < 0.25 THEN '[0, 0.25)' WHEN off < 0.5 THEN '[0.25, 0.5)' WHEN off < 1 THEN '[0.5, 1)'
                    WHEN off < 2 THEN '[1, 2)' WHEN off < 4 THEN '[2, 4)' ELSE '[4, inf)' END AS seconds,
               count(*) AS spans, round(avg(off), 2) AS mean_s
        FROM o GROUP BY ALL ORDER BY span_check, min(off)""",
    ),
]

# Each check counts offending items; 0 is healthy.
_CHECKS: list[tuple[str, str]] = [
    ("duplicate ids in cot", "SELECT count(*) - count(DISTINCT id) FROM cot"),
    ("duplicate ids in rl", "SELECT count(*) - count(DISTINCT id) FROM rl"),
    (
        "boxes outside [0, 1] or with no area",
        f"""
        WITH boxes AS (SELECT unnest(item.boxes) AS b
                       FROM (SELECT unnest(key_items) AS item FROM {_BOTH}))
        SELECT count(*) FROM boxes
        WHERE least(b[1], b[2], b[3], b[4]) < 0 OR greatest(b[1], b[2], b[3], b[4]) > 1
           OR b[3] <= b[1] OR b[4] <= b[2]""",
    ),
    (
        "rows whose key frames are unsorted or repeat an idx",
        f"""
        SELECT count(*) FROM {_BOTH}
        WHERE list_transform(key_frames, lambda k: k.time)
                  <> list_sort(list_transform(key_frames, lambda k: k.time))
           OR len(list_distinct(list_transform(key_frames, lambda k: k.idx))) <> len(key_frames)""",
    ),
]


def summary(root: Path) -> list[AuditTable]:
    """The canned audit of a dataset folder: counts, rejects, box, key-frame and trace
    statistics, provenance, the manifest's totals, and health checks.

    >>> summary(Path("out"))[1]  # doctest: +SKIP
    AuditTable(title='Rejects by stage and code', columns=['stage', 'code', 'rejects'],
               rows=[('verify', 'box_too_large', 3), ('probe', 'media_corrupt', 1)])
    """
    root = Path(root)
    manifest = _manifest_or_none(root)
    con = connect(root)
    try:
        tables = [_run(con, title, sql) for title, sql in _CANNED]
        tables += _inherited_tables(con)
        tables += evidence_tables(con, manifest)
        tables.append(_manifest_table(manifest))
        tables.append(_cost_table(manifest))
        if manifest is not None and manifest.llm is not None:
            tables += annotation_tables(con, manifest.llm)
        plan_table = _plan_table(root, manifest)
        if plan_table is not None:
            tables.append(plan_table)
        tables.append(_checks_table(con, root, manifest))
    finally:
        con.close()
    return tables


def _inherited_tables(con: duckdb.DuckDBPyConnection) -> list[AuditTable]:
    """What the span and gold checks did; none for a dataset built before rows had a lineage."""
    try:
        return [_run(con, title, sql) for title, sql in _INHERITED]
    except duckdb.BinderException:
        return []


def _run(con: duckdb.DuckDBPyConnection, title: str, sql: str) -> AuditTable:
    cursor = con.execute(sql)
    return AuditTable(title=title, columns=[c[0] for c in cursor.description], rows=cursor.fetchall())


def _manifest_or_none(root: Path) -> Manifest | None:
    # A folder mid-build has shards but no manifest yet: audit what is there.
    try:
        return load_manifest(root)
    except StgrError:
        return None


def _manifest_table(manifest: Manifest | None) -> AuditTable:
    columns = ["key", "value"]
    if manifest is None:
        return AuditTable("Manifest", columns, [("manifest.json", "missing: the build has not finished")])
    rows: list[tuple] = [
        ("build_id", manifest.build_id),
        ("code_version", manifest.code_version),
        ("config_hash", manifest.config_hash),
        ("shards", len({Path(f.path).name for f in manifest.shards})),
        *((f"rows: {name}", count) for name, count in manifest.counts.items()),
        ("prompts", ", ".join(f"{p.name}@{p.version}" for p in manifest.prompts)),
        ("detector", json.dumps(manifest.detector, sort_keys=True)),
        ("complete", manifest.complete),
        ("samples left for the next run", manifest.pending),
    ]
    return AuditTable("Manifest", columns, rows)


def _cost_table(manifest: Manifest | None) -> AuditTable:
    """LLM requests, tokens and images of the build (every reply its rows used; ``cached``
    of them were paid for by an earlier run of the same folder)."""
    columns = ["requests", "cached", "failed", "prompt_tokens", "completion_tokens", "images"]
    usage = manifest.llm if manifest is not None else None
    rows = [tuple(getattr(usage, column) for column in columns)] if usage is not None else []
    return AuditTable("LLM cost", columns, rows)


#: The annotation checks (``annotate/reply.py``) and the reject code of each.
_CHECK_CODES = {
    "wrong_object": "wrong_object_name",
    "prose_time": "prose_time_or_box",
    "off_span": "key_frame_off_span",
    "conclusion": "conclusion_mismatch",
    "finish_length": "llm_invalid_reply",
}


_CHECK_COLUMNS = ["check", "replies_caught", "fixed_by_reask", "dropped_sentences", "rejects"]


def annotation_tables(con: duckdb.DuckDBPyConnection, usage: LlmUsage) -> list[AuditTable]:
    """The LLM annotator's checks at work: per check the replies it caught, the re-asks that
    fixed them and the samples it rejected; the judge's verdicts; rows per sample annotated,
    per source (the paper kept about 67%)."""
    rejects = dict(con.execute("SELECT code, count(*) FROM rejects GROUP BY code").fetchall())
    checks = usage.checks
    rows = [
        (
            check,
            checks.get(f"{check}.caught", 0),
            checks.get(f"{check}.fixed", 0),
            checks.get(f"{check}.dropped", 0),
            rejects.get(code, 0),
        )
        for check, code in _CHECK_CODES.items()
    ]
    yes, no = checks.get("judge.yes", 0), checks.get("judge.no", 0)
    formats = ", ".join(f"{k.removeprefix('format.')}: {v}" for k, v in checks.items() if k.startswith("format."))
    judge = [
        (
            yes,
            no,
            round(yes / (yes + no), 4) if yes + no else None,
            rejects.get("crops_rejected", 0),
            usage.judge_requests,
            formats or "json_schema",
        )
    ]
    annotated = """
    SELECT source, count(*) FILTER (WHERE kind = 'row') AS rows,
           count(*) AS samples_annotated,
           round(count(*) FILTER (WHERE kind = 'row') / count(*), 4) AS yield
    FROM (SELECT source, 'row' AS kind FROM cot
          UNION ALL SELECT source, 'reject' FROM rejects WHERE stage IN ('annotate', 'verify'))
    GROUP BY source ORDER BY source"""
    cursor = con.execute(annotated)
    return [
        AuditTable("Annotation checks", _CHECK_COLUMNS, rows),
        AuditTable(
            "Judge agreement (crops the judge confirmed)",
            ["yes", "no", "agreement", "samples_rejected", "judge_requests", "response_format"],
            judge,
        ),
        AuditTable(
            "Yield per source (CoT rows / samples annotated)", [c[0] for c in cursor.description], cursor.fetchall()
        ),
    ]


def _plan_table(root: Path, manifest: Manifest | None) -> AuditTable | None:
    """What ``plan.json`` estimated beside what the build measured (rows: annotation may
    still reject planned samples; LLM figures: the manifest's totals)."""

    plan = read_plan(root)
    if plan is None:
        return None
    counts = manifest.counts if manifest is not None else {}
    usage = manifest.llm if manifest is not None else None
    rows: list[tuple] = [(f"rows: stgr_{d}", plan.rows(d), counts.get(f"stgr_{d}", 0)) for d in ("cot", "rl")]
    est = plan.estimate
    for label, planned, field in (
        ("LLM requests", est.requests + est.crop_requests + est.event_judge_requests, "requests"),
        ("images sent", est.images, "images"),
        ("prompt tokens", est.prompt_tokens, "prompt_tokens"),
        ("completion tokens", est.completion_tokens, "completion_tokens"),
    ):
        rows.append((label, planned, getattr(usage, field) if usage is not None else 0))
    return AuditTable("Plan: estimate vs actual", ["figure", "estimate", "actual"], rows)


def _checks_table(con: duckdb.DuckDBPyConnection, root: Path, manifest: Manifest | None) -> AuditTable:
    rows = [(name, 0, _scalar(con, sql)) for name, sql in _CHECKS]
    if manifest is not None:
        for view, dataset in VIEWS.items():
            rows.append(
                (
                    f"rows in {view} = manifest",
                    manifest.counts.get(dataset, 0),
                    _scalar(con, f"SELECT count(*) FROM {view}"),
                )
            )
        rows.append(("shard files not in the manifest", 0, len(_unlisted_files(root, manifest))))
        rows.append(("manifest files missing or with another sha256", 0, _bad_checksums(root, manifest)))
    return AuditTable(
        "Checks",
        ["check", "expected", "actual", "ok"],
        [(name, expected, actual, expected == actual) for name, expected, actual in rows],
    )


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    assert row is not None  # an aggregate query has one row
    return int(row[0])


def _unlisted_files(root: Path, manifest: Manifest) -> list[str]:
    listed = {f.path for f in manifest.shards}
    on_disk = {p.relative_to(root).as_posix() for d in DATASETS for p in (root / d).glob("part-*.parquet")}
    return sorted(on_disk - listed)


def _bad_checksums(root: Path, manifest: Manifest) -> int:
    return sum(1 for f in manifest.shards if not (root / f.path).is_file() or sha256_file(root / f.path) != f.sha256)
