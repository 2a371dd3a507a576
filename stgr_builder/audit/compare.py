"""Audits beyond the canned summary: distributions, and two versions of a dataset compared.

>>> [t.title for t in distributions(Path("out"))]              # doctest: +SKIP
['Box area distribution', 'Box aspect-ratio distribution']
>>> [t.title for t in compare(Path("out-v2"), Path("out"))]     # doctest: +SKIP
['Versions', 'Rows changed', 'Rejects by reason (versions)', 'Fidelity by version',
 'Rejects fixed', 'Fidelity of the re-annotated rows']
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from stgr_builder.audit.views import VIEWS, AuditTable, connect, create_view, sql_literal
from stgr_builder.core.layout import load_manifest
from stgr_builder.errors import StgrError

_BOTH = (
    "(SELECT 'cot' AS dataset, * EXCLUDE (reasoning_process) FROM {p}cot UNION ALL BY NAME "
    "SELECT 'rl' AS dataset, * FROM {p}rl)"
)

# Histogram buckets of box area (share of the frame) and aspect ratio (w / h, normalized units).
_AREA_EDGES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
_ASPECT_EDGES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.33, 2.0, 4.0, 1e9]


def _buckets(expr: str, edges: list[float]) -> str:
    cases = " ".join(f"WHEN {expr} < {hi} THEN {i}" for i, hi in enumerate(edges[1:]))
    return f"CASE {cases} ELSE {len(edges) - 2} END"


def _label(edges: list[float], i: int) -> str:
    hi = edges[i + 1]
    return f"[{edges[i]:g}, {'inf' if hi >= 1e9 else f'{hi:g}'})"


def _histogram(con, title: str, value: str, edges: list[float]) -> AuditTable:
    sql = f"""
        WITH items AS (SELECT dataset, unnest(key_items) AS item FROM {_BOTH.format(p="")}),
             boxes AS (SELECT dataset, unnest(item.boxes) AS b FROM items),
             v AS (SELECT dataset, {value} AS x FROM boxes)
        SELECT dataset, {_buckets("x", edges)} AS bucket, count(*) AS boxes
        FROM v WHERE x IS NOT NULL GROUP BY ALL ORDER BY dataset, bucket"""
    rows = con.execute(sql).fetchall()
    totals: dict[str, int] = {}
    for dataset, _, n in rows:
        totals[dataset] = totals.get(dataset, 0) + n
    out = [(dataset, _label(edges, bucket), n, round(n / totals[dataset], 3)) for dataset, bucket, n in rows]
    return AuditTable(title, ["dataset", "bucket", "boxes", "share"], out)


def distributions(root: Path) -> list[AuditTable]:
    """Histograms of box area and aspect ratio over every key item of both datasets."""
    con = connect(root)
    try:
        return [
            _histogram(con, "Box area distribution", "(b[3] - b[1]) * (b[4] - b[2])", _AREA_EDGES),
            _histogram(con, "Box aspect-ratio distribution", "(b[3] - b[1]) / nullif(b[4] - b[2], 0)", _ASPECT_EDGES),
        ]
    finally:
        con.close()


def connect_pair(new: Path, old: Path) -> duckdb.DuckDBPyConnection:
    """Views ``cot``, ``rl``, ``rejects`` over ``new`` and ``old_cot``, ... over ``old``;
    sandboxed to the two folders."""
    new, old = Path(new).resolve(), Path(old).resolve()
    for root in (new, old):
        if not root.is_dir():
            raise StgrError(f"{root} is not a folder: pass dataset folders that `stgr build` wrote")
    con = duckdb.connect(":memory:")
    for view, dataset in VIEWS.items():
        create_view(con, new, view, dataset)
        create_view(con, old, f"old_{view}", dataset)
    con.execute(f"SET allowed_directories = [{sql_literal(str(new) + '/')}, {sql_literal(str(old) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _table(con, title: str, sql: str) -> AuditTable:
    cursor = con.execute(sql)
    return AuditTable(title, [c[0] for c in cursor.description], cursor.fetchall())


#: The rows of both versions whose evidence differs: other key frames, or other boxes on them
#: (``stgr audit NEW --compare OLD --sql`` can run it too, over the views cot and old_cot).
EVIDENCE_CHANGED = """
    SELECT n.id, n.task, len(o.key_items) AS old_items, len(n.key_items) AS new_items,
           list_sort(list_transform(o.key_frames, lambda k: k.idx)) AS old_frames,
           list_sort(list_transform(n.key_frames, lambda k: k.idx)) AS new_frames
    FROM cot n JOIN old_cot o USING (id)
    WHERE CAST(n.key_items AS VARCHAR) <> CAST(o.key_items AS VARCHAR)
       OR CAST(n.key_frames AS VARCHAR) <> CAST(o.key_frames AS VARCHAR)
    ORDER BY n.id"""


#: The old version's rejected samples by reason, and what became of them in the new one: a row
#: now (``fixed``: a CoT or RL row with that id), still a reject (any code), or neither.
REJECTS_FIXED = """
    WITH o AS (SELECT id, min(stage) AS stage, min(code) AS code FROM old_rejects GROUP BY id),
         fixed AS (SELECT id FROM cot UNION SELECT id FROM rl),
         still AS (SELECT DISTINCT id FROM rejects)
    SELECT o.stage, o.code, count(*) AS old_rejects,
           count(*) FILTER (WHERE o.id IN (SELECT id FROM fixed)) AS fixed,
           count(*) FILTER (WHERE o.id IN (SELECT id FROM still)) AS still_rejected
    FROM o GROUP BY ALL ORDER BY o.stage, o.code"""


def rejects_fixed(new: Path, old: Path | None = None) -> int:
    """How many of the old version's rejected samples are rows in the new one.

    >>> rejects_fixed(Path("out-v2"))  # doctest: +SKIP
    7
    """
    table = next(t for t in compare(new, old) if t.title == "Rejects fixed")
    return sum(row[table.columns.index("fixed")] for row in table.rows)


def compare(new: Path, old: Path | None = None) -> list[AuditTable]:
    """Compare a version with an earlier one (default: its manifest's ``parent``): rows
    unchanged / re-annotated / changed / added / removed per dataset, rejects by reason in
    each, the old rejects fixed (now rows) by reason, and fidelity figures per version and over the re-annotated
    rows."""
    new = Path(new)
    if old is None:
        parent = load_manifest(new).parent
        if parent is None:
            raise StgrError(f"{new} has no parent version: give --compare OLD_DIR")
        old = Path(parent.path)
    con = connect_pair(new, old)
    try:
        tables = [_versions(new, old)]
        changed = []
        for view in ("cot", "rl"):
            # Content = every column but provenance; a re-annotated row has new provenance.
            sql = f"""
                WITH n AS (SELECT t.id, md5(CAST(t AS VARCHAR)) AS h, p.build_id AS b
                           FROM (SELECT * EXCLUDE (provenance) FROM {view}) t
                           JOIN (SELECT id, provenance.build_id FROM {view}) p USING (id)),
                     o AS (SELECT t.id, md5(CAST(t AS VARCHAR)) AS h, p.build_id AS b
                           FROM (SELECT * EXCLUDE (provenance) FROM old_{view}) t
                           JOIN (SELECT id, provenance.build_id FROM old_{view}) p USING (id))
                SELECT '{view}' AS dataset,
                       count(*) FILTER (WHERE n.id IS NOT NULL AND o.id IS NOT NULL AND n.h = o.h AND n.b = o.b)
                           AS unchanged,
                       count(*) FILTER (WHERE n.id IS NOT NULL AND o.id IS NOT NULL AND n.b <> o.b) AS reannotated,
                       count(*) FILTER (WHERE n.id IS NOT NULL AND o.id IS NOT NULL AND n.h <> o.h) AS content_changed,
                       count(*) FILTER (WHERE o.id IS NULL) AS added,
                       count(*) FILTER (WHERE n.id IS NULL) AS removed
                FROM n FULL OUTER JOIN o USING (id)"""
            changed.extend(con.execute(sql).fetchall())
        tables.append(
            AuditTable(
                "Rows changed", ["dataset", "unchanged", "reannotated", "content_changed", "added", "removed"], changed
            )
        )
        tables.append(
            _table(
                con,
                "Rejects by reason (versions)",
                """
            WITH n AS (SELECT stage, code, count(*) AS c FROM rejects GROUP BY ALL),
                 o AS (SELECT stage, code, count(*) AS c FROM old_rejects GROUP BY ALL)
            SELECT stage, code, coalesce(o.c, 0) AS old, coalesce(n.c, 0) AS new
            FROM n FULL OUTER JOIN o USING (stage, code) ORDER BY stage, code""",
            )
        )
        tables.append(_table(con, "Rejects fixed", REJECTS_FIXED))
        fidelity = """
            SELECT '{name}' AS version, count(*) AS rows,
                   round(avg(provenance.detector_agreement_iou), 3) AS mean_agreement_iou,
                   round(avg(provenance.detector_score), 3) AS mean_detector_score,
                   round(avg(provenance.verifier_votes), 2) AS mean_verifier_votes,
                   round(avg(len(key_frames)), 2) AS mean_key_frames,
                   round(avg(len(reasoning_process)), 1) AS mean_trace_chars
            FROM {p}cot {where}"""
        tables.append(
            _table(
                con,
                "Fidelity by version",
                fidelity.format(name="old", p="old_", where="")
                + " UNION ALL "
                + fidelity.format(name="new", p="", where="")
                + " ORDER BY version DESC",
            )
        )
        redone = (
            "WHERE id IN (SELECT n.id FROM cot n JOIN old_cot o USING (id) "
            "WHERE n.provenance.build_id <> o.provenance.build_id)"
        )
        tables.append(
            _table(
                con,
                "Fidelity of the re-annotated rows",
                fidelity.format(name="old", p="old_", where=redone)
                + " UNION ALL "
                + fidelity.format(name="new", p="", where=redone)
                + " ORDER BY version DESC",
            )
        )
        tables.append(_table(con, "Rows whose evidence changed (CoT: key frames or boxes)", EVIDENCE_CHANGED))
    finally:
        con.close()
    return tables


def _versions(new: Path, old: Path) -> AuditTable:
    rows: list[tuple[str, str, str | None, int | None, int | None, int | None, str | None]] = []
    for name, root in (("old", old), ("new", new)):
        try:
            manifest = load_manifest(root)
        except StgrError:
            rows.append((name, str(root), None, None, None, None, None))
            continue
        prompts = ", ".join(f"{p.name}@{p.version}" for p in manifest.prompts)
        rows.append(
            (
                name,
                str(root),
                manifest.build_id,
                manifest.counts.get("stgr_cot", 0),
                manifest.counts.get("stgr_rl", 0),
                manifest.counts.get("rejects", 0),
                prompts,
            )
        )
    return AuditTable("Versions", ["version", "folder", "build_id", "cot", "rl", "rejects", "prompts"], rows)
