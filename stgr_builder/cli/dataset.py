"""The commands that read a built dataset: ``stgr audit``, ``stgr reannotate``, ``stgr verify`` and ``stgr export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.text import Text

from stgr_builder.cli.app import console, err_console, quiet_orchestrator, session
from stgr_builder.cli.output import pending_line, print_audit, print_comparison, print_query
from stgr_builder.errors import StgrError

#: A dataset to read: a folder, or the URL of one on object storage (its committed files are
#: copied to a local read copy first: ``storage.open_dataset``).
DatasetArg = Annotated[str, typer.Argument(help="dataset folder or bucket URL (s3://, gs://, az://)")]


def _dataset(location: str, with_stages: bool = False) -> Path:
    from stgr_builder.storage import open_dataset

    return open_dataset(location, with_stages=with_stages)


def audit(
    root: DatasetArg,
    sql: Annotated[str | None, typer.Option(help="read-only query over the views cot, rl, rejects")] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="an earlier version to compare with (default: the version's parent, when it has one)"),
    ] = None,
    gallery: Annotated[Path | None, typer.Option(help="write an HTML gallery of sampled rows here")] = None,
    n: Annotated[int, typer.Option(min=1, max=10_000, help="rows in the gallery")] = 24,
    where: Annotated[str | None, typer.Option(help="gallery: only rows this SQL predicate selects")] = None,
    embed: Annotated[bool, typer.Option(help="gallery: embed the images in the page")] = False,
    brief: Annotated[
        bool, typer.Option(help="only what was built, rejects, cost and checks (what `stgr demo` shows)")
    ] = False,
    limit: Annotated[int, typer.Option(min=0, help="--sql: rows shown at most (the rest are counted)")] = 1000,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="--sql: seconds the query may run before it is interrupted")
    ] = 60.0,
) -> None:
    """The canned audit summary (and the comparison with the parent version), any read-only
    query over the shards, or an HTML gallery of sampled rows."""
    from stgr_builder.audit import query

    root_path = _dataset(root)
    if gallery is not None:
        from stgr_builder.audit.gallery import write_gallery

        shown = write_gallery(root_path, gallery, n=n, where=where, embed=embed)
        console.print(Text(f"wrote {gallery} ({shown} rows)"))
        return
    if sql is not None:
        # Ctrl-C during the query: ``stopping`` ends the process with one line and 130.
        print_query(query(root_path, sql, limit=limit, timeout_s=timeout))
        return
    print_audit(root_path, brief=brief, name=root)
    print_comparison(root_path, _dataset(compare) if compare is not None else None)


def reannotate(
    root: Annotated[str, typer.Argument(help="dataset folder or bucket URL (a finished build or version)")],
    where: Annotated[
        str,
        typer.Option(
            help="SQL predicate over the rows (views cot, rl) or the rejects (id, stage, code, message, source) "
            "selecting what to redo"
        ),
    ],
    prompt: Annotated[str, typer.Option(help="prompt name under prompts/ (or a .yaml path)")],
    model: Annotated[str | None, typer.Option(help="annotator model (LLM prompts)")] = None,
    out: Annotated[
        str | None, typer.Option(help="the new version's folder or bucket URL; default DIR-v2, -v3, ...")
    ] = None,
) -> None:
    """Re-annotate the rows or rejected samples a SQL predicate selects; write a new version beside the old one."""
    quiet_orchestrator()
    from stgr_builder.flows.build import flow_runner
    from stgr_builder.reannotate import reannotate as reannotate_rows
    from stgr_builder.storage import is_url, local_folder

    session.writing[:] = [local_folder(out)] if out is not None else []
    parent: str | Path = root if is_url(root) else Path(root)
    new: str | Path | None = out if out is None or is_url(out) else Path(out)
    target, manifest = reannotate_rows(parent, where=where, prompt=prompt, model=model, out=new, runner=flow_runner)
    assert manifest.reannotation is not None  # a re-annotation's manifest records it
    console.print(
        f"[bold green]re-annotated[/] {manifest.reannotation.selected} rows of {escape(str(root))} "
        f"into {escape(str(new if isinstance(new, str) else target))} (build {escape(manifest.build_id)})"
    )
    _print_rejects_fixed(target, manifest)
    if not manifest.complete:
        console.print(f"[bold yellow]{pending_line(manifest)}[/]", highlight=False)
    print_comparison(target, None)


def _print_rejects_fixed(target: Path, manifest) -> None:
    """One line when the selection held rejected samples: how many are rows now."""
    selected = manifest.reannotation.rejects_selected
    if selected:
        from stgr_builder.audit.compare import rejects_fixed

        console.print(
            f"of them {selected} were rejected samples: {rejects_fixed(target)} fixed (now rows)", highlight=False
        )


def verify_cmd(
    root: DatasetArg,
    fast: Annotated[bool, typer.Option(help="skip hashing the key-frame JPEGs (only check that they exist)")] = False,
) -> None:
    """Check a dataset folder against its manifest: files, checksums, row counts, key frames
    (each JPEG's bytes against its content-addressed name, unless --fast)."""
    from stgr_builder.shards.check import verify_dataset

    problems = verify_dataset(_dataset(root), key_frame_content=not fast)
    if problems:
        for problem in problems:
            err_console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        raise StgrError(f"{root}: {len(problems)} problems (first: {problems[0]})")
    console.print(
        f"[bold green]ok[/] {escape(str(root))} matches its manifest"
        + (" (key-frame contents not checked: --fast)" if fast else "")
    )


#: ``stgr export FORMAT``: one command per layout.
export_app = typer.Typer(no_args_is_help=True, help="Write a dataset in another project's layout.")


def export_open_o3(
    root: DatasetArg,
    to: Annotated[Path, typer.Option(help="target folder (json_data/ and videos/.../kfs/ are written in it)")],
    overwrite: Annotated[
        bool,
        typer.Option(
            help="export into a folder holding another export or other files (replaces only files an export wrote)"
        ),
    ] = False,
) -> None:
    """The released Open-o3 Video training code's JSON files and key-frame layout; refuses a
    non-empty folder it did not write."""
    from stgr_builder.shards.export import export_open_o3 as run

    written = run(_dataset(root), to, overwrite=overwrite)
    console.print(Text(f"wrote {to}: " + ", ".join(f"{name} {count} rows" for name, count in written.items())))
