"""DuckDB views over a dataset folder, and read-only queries on them.

>>> con = connect(Path("out"))  # doctest: +SKIP
>>> con.sql("SELECT task, count(*) FROM cot GROUP BY task").fetchall()  # doctest: +SKIP
[('temporal QA', 40), ('visual QA', 12)]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import duckdb

from stgr_builder.core.arrow import DATASETS, schema_for
from stgr_builder.core.files import parquet_problem
from stgr_builder.errors import QueryTimeout, StgrError

#: View name -> dataset folder.
VIEWS: dict[str, str] = {"cot": "stgr_cot", "rl": "stgr_rl", "rejects": "rejects"}

#: Bounds of a user's query (``stgr audit --sql``): rows shown, seconds, DuckDB's memory.
DEFAULT_LIMIT = 1000
DEFAULT_TIMEOUT_S = 60.0
MEMORY_LIMIT = "2GB"
#: Rows past the limit are counted (never kept) this many at a time.
_COUNT_CHUNK = 100_000

_T = TypeVar("_T")


@dataclass(frozen=True)
class AuditTable:
    """One titled table of results; the CLI renders it (a library call never prints).

    >>> AuditTable("Rejects", ["code", "rejects"], [("box_too_large", 3)]).rows[0]
    ('box_too_large', 3)
    """

    title: str
    columns: list[str]
    rows: list[tuple] = field(default_factory=list)
    #: Rows the query gave past ``rows`` (a capped query); None: nothing was left out.
    left_out: int | None = None
    #: True when ``left_out`` is a lower bound (the count was stopped by the timeout).
    left_out_partial: bool = False


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
    parts = sorted((root / dataset).glob("part-*.parquet"))
    for part in parts:  # DuckDB would fail on a broken one later, with a message naming no fix
        problem = parquet_problem(part)
        if problem is not None:
            raise StgrError(
                f"{part} is {problem}: move it out of {root / dataset} (every reader takes each part-*.parquet "
                f"there as rows), then `stgr verify {root}`"
            )
    if parts:
        # The glob never matches a writer's temp file (.part-00000.parquet.<hex>.tmp).
        pattern = sql_literal(str(root / dataset / "part-*.parquet"))
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({pattern}, union_by_name=false)")
        return
    # read_parquet fails on a glob with no files: serve the schema's empty table instead.
    con.register(f"_empty_{view}", schema_for(DATASETS[dataset]).empty_table())
    con.execute(f"CREATE VIEW {view} AS SELECT * FROM _empty_{view}")


def _sandbox(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    # Spilling needs a temp directory outside root: none, so the memory limit is a hard bound.
    con.execute(f"SET memory_limit = {sql_literal(MEMORY_LIMIT)}")
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


def query(root: Path, sql: str, *, limit: int | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> AuditTable:
    """Run one read-only query over the views ``cot``, ``rl``, ``rejects``.

    With ``limit``, at most that many rows are kept; the rest are counted, never held
    (``left_out``). The query runs on a worker thread under ``timeout_s`` (DuckDB has no
    statement timeout: a watchdog calls ``interrupt``); a ``KeyboardInterrupt`` of the calling
    thread interrupts it too, and is raised again once DuckDB has stopped.

    >>> query(Path("out"), "SELECT code, count(*) AS n FROM rejects GROUP BY code").rows  # doctest: +SKIP
    [('box_too_large', 3)]
    >>> query(Path("out"), "SELECT * FROM range(5000)", limit=10).left_out  # doctest: +SKIP
    4990
    >>> query(Path("out"), "DROP VIEW cot")  # doctest: +SKIP
    StgrError: the audit runs read-only queries only (SELECT, WITH, ...); refused a DROP statement
    """
    check_read_only(sql)
    con = connect(root)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        cursor = _bounded(con, lambda: con.execute(sql), deadline, timeout_s)
        columns = [column[0] for column in cursor.description]
        if limit is None:
            return AuditTable(sql.strip(), columns, _bounded(con, cursor.fetchall, deadline, timeout_s))
        rows = _bounded(con, lambda: cursor.fetchmany(limit + 1), deadline, timeout_s)
        if len(rows) <= limit:
            return AuditTable(sql.strip(), columns, rows)
        left_out, partial = _left_out(con, sql, limit, deadline, timeout_s)
        return AuditTable(sql.strip(), columns, rows[:limit], left_out=left_out, left_out_partial=partial)
    except duckdb.Error as exc:
        raise StgrError(f"query failed: {_first_line(exc)}") from None
    finally:
        con.close()


def _left_out(
    con: duckdb.DuckDBPyConnection, sql: str, limit: int, deadline: float | None, timeout_s: float | None
) -> tuple[int, bool]:
    """How many rows of ``sql`` the cap of ``limit`` left out: (count, stopped by the timeout),
    never holding them. DuckDB counts the query as a subquery (fetching the rest into Python,
    even chunk by chunk, is ~20x slower, and an Arrow reader of a DB-API result holds it all);
    a statement that is no subquery (DESCRIBE, SHOW, ...) is run again and counted chunk by
    chunk."""
    try:
        try:
            count_sql = f"SELECT count(*) FROM (\n{sql.strip().rstrip(';')}\n)"
            check_read_only(count_sql)  # the wrapped text is still one query, nothing else
            total = _bounded(con, lambda: _scalar(con, count_sql), deadline, timeout_s)
        except QueryTimeout:
            raise
        except (duckdb.Error, StgrError):
            cursor = _bounded(con, lambda: con.execute(sql), deadline, timeout_s)
            total = 0
            while chunk := _bounded(con, lambda: len(cursor.fetchmany(_COUNT_CHUNK)), deadline, timeout_s):
                total += chunk
    except QueryTimeout:
        return 1, True  # the fetch already saw one row past the cap
    return max(1, int(total) - limit), False


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _bounded(
    con: duckdb.DuckDBPyConnection, call: Callable[[], _T], deadline: float | None, timeout_s: float | None
) -> _T:
    """``call()`` on a worker thread; ``con.interrupt()`` at the deadline or on a
    KeyboardInterrupt of this thread (DuckDB holds the thread it runs on: a signal would wait
    for the query to end)."""
    box: dict[str, object] = {}
    done = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C marks the thread dead (3.11)

    def work() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="stgr-query", daemon=True).start()
    try:
        while not done.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                con.interrupt()
                done.wait()
                raise QueryTimeout(
                    f"query stopped after {timeout_s:g} s (--timeout): narrow it, add a LIMIT, or raise --timeout"
                )
            done.wait(0.1 if left is None else min(0.1, left))
    except KeyboardInterrupt:
        con.interrupt()
        done.wait()
        raise
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
