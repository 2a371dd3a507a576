"""What the commands print: tables (folded when too wide), the audit, a query's rows, what is pending."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from stgr_builder.cli.app import console
from stgr_builder.errors import StgrError


def print_query(table) -> None:
    """A query's rows, then how many rows the cap left out."""
    print_table("query", table.columns, table.rows)
    if table.left_out:
        more = "at least " if table.left_out_partial else ""
        stopped = " (counting stopped at the timeout)" if table.left_out_partial else ""
        console.print(Text(f"{more}{table.left_out} more rows left out{stopped}: raise --limit, or narrow the query"))


def print_pending_batches(out: Path) -> None:
    """Batch mode: ``N requests in K batches pending; run again to collect``."""
    from stgr_builder.annotate import pending_batches

    requests, batches = pending_batches(out)
    if batches:
        console.print(f"{requests} requests in {batches} batches pending; run again to collect", highlight=False)


def pending_line(manifest) -> str:
    """``12 samples left for the next run (budget reached)`` or ``(pending: server_error 2,
    timeout 1; run the build again)``."""
    reasons = dict(manifest.pending_reasons)
    if not reasons or set(reasons) == {"budget"}:
        return f"{manifest.pending} samples left for the next run (budget reached)"
    listed = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    return f"{manifest.pending} samples left for the next run (pending: {listed}; run the build again)"


#: The tables of the brief audit (``stgr demo``, ``stgr audit --brief``): what was built, what
#: was lost and why, what it cost, whether it holds together. The rest waits for ``stgr audit``.
BRIEF_TABLES = (
    "Rows by task and source",
    "Rejects by stage and code",
    "Reject examples",
    "Evidence against truth",
    "LLM cost",
    "Annotation checks",
    "Checks",
)


def print_audit(root: Path, *, brief: bool = False, name: str | None = None) -> None:
    """The audit's tables, leaving out those with no rows (nothing to say); ``brief``: only
    ``BRIEF_TABLES``, the checks in one line when they all pass, and how to see the rest
    (``name``: what the user calls the dataset, a URL whose copy ``root`` is)."""
    from stgr_builder.audit import summary
    from stgr_builder.audit.compare import distributions

    tables = summary(root) if brief else summary(root) + distributions(root)
    for table in tables:
        if not table.rows or (brief and table.title.split(" (")[0] not in BRIEF_TABLES):
            continue
        if brief and table.title == "Checks" and all(row[-1] is True for row in table.rows):
            console.print(Text(f"Checks: all {len(table.rows)} pass (ids, boxes, key frames, counts, files)"))
            continue
        print_table(table.title, table.columns, table.rows)
    if brief:
        console.print(Text(f"Every table (provenance, key frames, traces, distributions): stgr audit {name or root}"))


def print_comparison(root: Path, old: Path | None) -> None:
    """The version comparison: with ``old``, or with the version's parent when it has one."""
    from stgr_builder.audit.compare import compare
    from stgr_builder.core.layout import load_manifest

    if old is None:
        try:
            parent = load_manifest(root).parent
        except StgrError:
            return
        if parent is None:
            return
        from stgr_builder.storage import is_url, open_dataset

        if is_url(parent.path):  # a version of a dataset in a bucket: its read copy
            old = open_dataset(parent.path)
    for table in compare(root, old):
        print_table(table.title, table.columns, table.rows)


#: A column is "readable" at this many characters; a table whose columns cannot all have
#: that much (or their whole content, when shorter) is folded into key/value rows.
_READABLE = 32


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def print_table(title: str, columns: list[str], rows: list, width: int | None = None) -> None:
    """A table, every value shown literally (``Text``, never rich markup); folded into one
    key/value block per row when it is too wide for the terminal."""
    cells = [[_cell(value) for value in row] for row in rows]
    heads = [str(column) for column in columns]
    natural = [
        max([len(head)] + [max((len(line) for line in row[i].splitlines()), default=0) for row in cells])
        for i, head in enumerate(heads)
    ]
    needed = sum(min(n, _READABLE) for n in natural) + 3 * len(heads) + 1  # borders and padding
    if len(heads) > 2 and needed > (width or console.width):
        console.print(Text(f"{title} (one block per row)", style="italic"))
        table = Table(show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for number, row in enumerate(cells):
            for i, (head, value) in enumerate(zip(heads, row, strict=False)):
                table.add_row(Text(head), Text(value), end_section=i == len(heads) - 1 and number < len(cells) - 1)
        console.print(table)
        return
    table = Table(title=Text(title), title_justify="left")
    for head in heads:
        table.add_column(Text(head), overflow="fold")
    for row in cells:
        table.add_row(*(Text(value) for value in row))
    console.print(table)
