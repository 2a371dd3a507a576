"""The hidden commands that check (or rewrite) the files generated from the code: JSON Schemas, reference pages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stgr_builder.cli.app import console
from stgr_builder.errors import StgrError


def schemas(write: Annotated[bool, typer.Option(help="rewrite schemas/ from the models")] = False) -> None:
    """Check (or rewrite) the JSON Schemas under schemas/."""
    from stgr_builder.core.data import data_folder
    from stgr_builder.models import json_schemas

    folder = data_folder("stgr_builder.schemas")
    stale = []
    for name, text in json_schemas().items():
        path = folder / f"{name}.json"
        if not path.is_file() or path.read_text() != text:
            stale.append(name)
            if write:
                path.write_text(text)
    if stale and not write:
        raise StgrError(f"stale schemas: {', '.join(stale)} (run stgr schemas --write)")
    console.print(f"schemas: {len(stale)} rewritten" if write else "schemas are current", markup=False)


def docs(
    write: Annotated[bool, typer.Option(help="rewrite the generated pages under docs/reference/")] = False,
) -> None:
    """Check (or rewrite) the reference pages generated from the code (config keys, reject codes)."""
    from stgr_builder.reference import reference_pages

    root = Path(__file__).resolve().parents[2]  # the repository (stgr_builder/cli/docs.py)
    stale = []
    for rel, text in reference_pages().items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(rel)
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if stale and not write:
        raise StgrError(f"stale reference pages: {', '.join(stale)} (run stgr docs --write)")
    console.print(f"reference pages: {len(stale)} rewritten" if write else "reference pages are current", markup=False)
