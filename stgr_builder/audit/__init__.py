"""Audit a built dataset with DuckDB: views ``cot``, ``rl``, ``rejects`` over the shards,
read-only queries, and the canned summary. Library calls return tables; the CLI renders them.

>>> [t.title for t in summary(Path("out"))][:2]  # doctest: +SKIP
['Rows by task and source', 'Rejects by stage and code']
>>> query(Path("out"), "SELECT count(*) AS n FROM cot").rows  # doctest: +SKIP
[(120,)]
"""

from stgr_builder.audit.summary import summary
from stgr_builder.audit.views import VIEWS, AuditTable, check_read_only, connect, query

__all__ = ["VIEWS", "AuditTable", "check_read_only", "connect", "query", "summary"]
