"""The reference pages under docs/reference/ are generated from the code (``stgr docs --write``),
never hand-written: a test fails when a config key, a bound, a description or a reject code
changes without them."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from typer.testing import CliRunner

from stgr_builder.cli import app
from stgr_builder.models import REJECT_CODE_HELP, BuildConfig, RejectCode
from stgr_builder.reference import config_reference, reference_pages, reject_code_reference

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_reference_pages_are_current():
    stale = [rel for rel, text in reference_pages().items() if (ROOT / rel).read_text(encoding="utf-8") != text]
    assert not stale, f"stale reference pages {stale}: run `stgr docs --write`"


def test_the_docs_command_names_a_stale_page(tmp_path, monkeypatch):
    page = ROOT / "docs" / "reference" / "reject-codes.md"
    original = page.read_text(encoding="utf-8")
    monkeypatch.setattr(
        "stgr_builder.reference.reject_code_reference", lambda: original.replace("`duplicate`", "`twice`")
    )
    result = CliRunner().invoke(app, ["docs"])
    assert result.exit_code != 0 and isinstance(result.exception, Exception)
    assert "docs/reference/reject-codes.md" in str(result.exception) and "stgr docs --write" in str(result.exception)
    assert page.read_text(encoding="utf-8") == original  # checking writes nothing


def test_every_reject_code_that_is_written_has_its_meaning_and_what_to_do():
    written = [code for code in RejectCode if code is not RejectCode.PENDING]
    assert sorted(REJECT_CODE_HELP) == sorted(written)  # every code a sample can end with
    stages = {"ingest", "probe", "sample", "track", "annotate", "verify"}
    for code, entry in REJECT_CODE_HELP.items():
        assert entry.stage in stages and entry.meaning and entry.what_to_do, code
    page = reject_code_reference()
    assert all(f"| `{code.value}` | {REJECT_CODE_HELP[code].meaning} |" in page for code in written)


def _sections(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel]]:
    found = {}
    for key, field in model.model_fields.items():
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        for kind in inner:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                path = f"{prefix}{key}{'[]' if getattr(annotation, '__origin__', None) is list else ''}"
                found[path] = kind
                found.update(_sections(kind, f"{path}."))
    return found


def test_the_config_reference_has_every_key_of_every_section_with_its_bounds():
    page = config_reference()
    sections = {"Top level": BuildConfig, **{f"`{path}`": model for path, model in _sections(BuildConfig).items()}}
    for title, model in sections.items():
        assert f"## {title}" in page, title
        body = page.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert [line.split(" | ")[0] for line in body.splitlines() if line.startswith("| `")] == [
            f"| `{key}`" for key in model.model_fields
        ], title
    assert "| `imgsz` | int | `320` | >= 32, <= 4096 |" in page  # DetectorConfig.imgsz: Field(320, ge=32, le=4096)
