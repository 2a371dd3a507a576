"""DuckDB views over a dataset folder, and read-only queries on them.

>>> con = connect(Path("out"))  # doctest: +SKIP
>>> con.sql("SELECT task, count(*) FROM cot GROUP BY task").fetchall()  # doctest: +SKIP
[('temporal QA', 40), ('visual QA', 12)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from stgr_builder.core.arrow import DATASETS, schema_for
from stgr_builder.errors import StgrError

#: View name -> dataset folder.
VIEWS: dict[str, str] = {"cot": "stgr_cot", "rl": "stgr_rl", "rejects": "rejects"}


@dataclass(frozen=True)
class AuditTable:
    """One titled table of results; the CLI renders it (a library call never prints).

    >>> AuditTable("Rejects", ["code", "rejects"], [("box_too_large", 3)]).rows[0]
    ('box_too_large', 3)
    """

    title: str
    columns: list[str]
    rows: list[tuple] = field(default_factory=list)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with views ``cot``, ``rl`` and ``rejects`` over the shards.

    A dataset with no shards yet still gets a view, with the right (empty) columns. The
    connection is sandboxed: it can read files under ``root`` only, and its settings are
    locked, so a query cannot reach the rest of the machine.

    >>> connect(Path("out")).sql("SELECT count(*) FROM rl").fetchall()  # doctest: +SKIP
    [(120,)]
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise StgrError(f"{root} is not a folder: pass the dataset folder that `stgr build` wrote")
    con = duckdb.connect(":memory:")
    for view, dataset in VIEWS.items():
        create_view(con, root, view, dataset)
    _sandbox(con, root)
    return con


def create_view(con: duckdb.DuckDBPyConnection, root: Path, view: str, dataset: str) -> None:
    if any((root / dataset).glob("part-*.parquet")):
        # The glob never matches a writer's temp file (.part-00000.parquet.<hex>.tmp).
        pattern = sql_literal(str(root / dataset / "part-*.parquet"))
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({pattern}, union_by_name=false)")
        return
    # read_parquet fails on a glob with no files: serve the schema's empty table instead.
    con.register(f"_empty_{view}", schema_for(DATASETS[dataset]).empty_table())
    con.execute(f"CREATE VIEW {view} AS SELECT * FROM _empty_{view}")


def _sandbox(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    con.execute(f"SET allowed_directories = [{sql_literal(str(root) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def check_read_only(sql: str) -> None:
    """Refuse anything but one query (SELECT, WITH, FROM, VALUES, DESCRIBE, SUMMARIZE, SHOW).

    >>> check_read_only("DROP VIEW cot")
    Traceback (most recent call last):
    ...
    stgr_builder.errors.StgrError: the audit runs read-only queries only (SELECT, WITH, ...); refused a DROP statement
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise StgrError(f"cannot parse the query: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise StgrError(f"give exactly one query, not {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        # EXPLAIN is refused too: EXPLAIN ANALYZE runs the statement it explains.
        raise StgrError(f"the audit runs read-only queries only (SELECT, WITH, ...); refused a {kind.name} statement")


def query(root: Path, sql: str) -> AuditTable:
    """Run one read-only query over the views ``cot``, ``rl``, ``rejects``.

    >>> query(Path("out"), "SELECT code, count(*) AS n FROM rejects GROUP BY code").rows  # doctest: +SKIP
    [('box_too_large', 3)]
    >>> query(Path("out"), "DROP VIEW cot")  # doctest: +SKIP
    StgrError: the audit runs read-only queries only (SELECT, WITH, ...); refused a DROP statement
    """
    check_read_only(sql)
    con = connect(root)
    try:
        cursor = con.execute(sql)
        columns = [column[0] for column in cursor.description]
        return AuditTable(title=sql.strip(), columns=columns, rows=cursor.fetchall())
    except duckdb.Error as exc:
        raise StgrError(f"query failed: {_first_line(exc)}") from None
    finally:
        con.close()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
