"""Re-annotation: 10% of the small demo re-annotated with a second prompt (an LLM one, against
the shipped dry-run server) touches those rows alone, writes a new version with lineage, keeps
the old one readable, and the audit compares the two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stgr_builder.audit import connect, query
from stgr_builder.audit.compare import compare, rejects_fixed
from stgr_builder.cli import app
from stgr_builder.core.arrow import table_to_rows
from stgr_builder.dryrun.demo import demo_config, generate_demo
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.models import CotRow, RlRow
from stgr_builder.pipeline import build
from stgr_builder.reannotate import reannotate

from helpers.small_demo import small_build

pytestmark = pytest.mark.slow


def _rows(out: Path, view: str, model) -> dict:
    with connect(out) as con:
        return {r.id: r for r in table_to_rows(con.sql(f"SELECT * FROM {view} ORDER BY id").to_arrow_table(), model)}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_reannotating_a_tenth_touches_only_those_rows(tmp_path_factory, tmp_path, monkeypatch):
    _, base = small_build(tmp_path_factory)
    before = _snapshot(base)
    n_rows = query(base, "SELECT count(*) FROM cot").rows[0][0]
    n = max(1, round(n_rows / 10))
    where = f"id IN (SELECT id FROM cot ORDER BY hash(id) LIMIT {n})"
    selected = {r[0] for r in query(base, f"SELECT id FROM cot WHERE {where}").rows}
    assert len(selected) == n
    out = tmp_path / "v2"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-reannotate-0123456789")
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = CliRunner().invoke(
            app,
            [
                "reannotate",
                str(base),
                "--where",
                where,
                "--prompt",
                "stgr-cot-llm",
                "--model",
                "stgr-dry-run",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        assert server.stats()["total"] == len(selected)  # one request per selected row, nothing else
        assert "Rows changed" in result.output  # the command ends with the comparison
        # Running it again resumes a finished version: nothing asked, same files.
        files = _snapshot(out)
        again, manifest = reannotate(base, where=where, prompt="stgr-cot-llm", model="stgr-dry-run", out=out)
        assert server.stats()["total"] == len(selected) and again == out.resolve()
    assert {k: v for k, v in _snapshot(out).items() if k.startswith(("stgr_", "rejects"))} == {
        k: v for k, v in files.items() if k.startswith(("stgr_", "rejects"))
    }

    assert _snapshot(base) == before  # the old version is untouched and still readable
    old_manifest = json.loads((base / "manifest.json").read_text())
    assert manifest.parent.build_id == old_manifest["build_id"] and manifest.parent.path == str(base.resolve())
    assert manifest.reannotation.selected == len(selected) and manifest.reannotation.where == where
    for model, view in ((CotRow, "cot"), (RlRow, "rl")):
        old, new = _rows(base, view, model), _rows(out, view, model)
        assert new.keys() == old.keys()
        for row_id, row in new.items():
            if row_id in selected:
                assert row.provenance.prompt_name == "stgr-cot-llm"
                assert row.provenance.annotator_model == "stgr-dry-run"
                assert row.provenance.replaces == old[row_id].provenance.build_id
                assert row.provenance.build_id == manifest.build_id != old[row_id].provenance.build_id
                # the track gate ran again: a confirmed verdict for every evidence box of the row
                boxes = [(item.idx, tuple(box)) for item in row.key_items for box in item.boxes]
                verdicts = [(t.idx, tuple(t.box)) for t in row.provenance.evidence_tracks if t.confirmed]
                assert len(verdicts) == len(boxes)
            else:
                assert row == old[row_id]  # carried over unchanged
    # frames and detections came from the parent's stage store: nothing decoded, nothing detected
    steps = {s.step: s for s in manifest.stats}
    for step in ("probe", "sample", "detect"):
        assert steps[step].resumed == steps[step].seen == len(selected)
    assert steps["annotate"].resumed == 0
    # key frames are shared with the parent (hard links), and the version verifies
    frame = query(out, "SELECT key_frames[1].path FROM cot LIMIT 1").rows[0][0]
    assert (out / frame).stat().st_ino == (base / frame).stat().st_ino
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0

    tables = {t.title: t for t in compare(out)}
    changed = {
        row[0]: dict(zip(tables["Rows changed"].columns, row, strict=False)) for row in tables["Rows changed"].rows
    }
    assert changed["cot"]["reannotated"] == len(selected)
    assert changed["cot"]["unchanged"] == n_rows - len(selected)
    assert changed["cot"]["added"] == changed["cot"]["removed"] == 0
    fidelity = tables["Fidelity of the re-annotated rows"]
    assert [row[:2] for row in fidelity.rows] == [("old", len(selected)), ("new", len(selected))]
    assert "Rejects by reason (versions)" in tables
    evidence = tables["Rows whose evidence changed (CoT: key frames or boxes)"]
    assert {row[0] for row in evidence.rows} <= selected  # only re-annotated rows can have new evidence


def test_a_bad_predicate_or_prompt_is_a_one_line_error(tmp_path_factory, tmp_path):
    _, base = small_build(tmp_path_factory)
    runner = CliRunner()
    bad_sql = runner.invoke(
        app,
        [
            "reannotate",
            str(base),
            "--where",
            "no_such_column = 1",
            "--prompt",
            "template-cot",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert bad_sql.exit_code != 0 and "--where" in str(bad_sql.exception)
    no_model = runner.invoke(
        app, ["reannotate", str(base), "--where", "true", "--prompt", "stgr-cot-llm", "--out", str(tmp_path / "y")]
    )
    assert no_model.exit_code != 0 and "--model" in str(no_model.exception)


def test_reannotating_rejects_turns_them_into_rows(tmp_path_factory, tmp_path, monkeypatch):
    """A build whose LLM broke the schema on some samples (no re-ask: rejected at once), then its
    ``llm_invalid_reply`` rejects re-annotated with a second prompt against a healthy server."""
    source = tmp_path_factory.mktemp("reject-demo")
    generate_demo(source, seed=0, n_videos=2, n_images=1)
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "judge": {"enabled": False},  # on by default for openai; not what this checks
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "timeout": 5.0,
            "max_retries": 1,
            "max_invalid_retries": 0,
        }
    )
    config_path = source / "llm.yaml"
    config_path.write_text(yaml.safe_dump(config))
    base, out = tmp_path / "base", tmp_path / "v2"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-reannotate-0123456789")
    with serve_llm(fault_rate=0.3, faults=["schema"]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        manifest = build(config_path, base)
    assert manifest.complete
    invalid = {r[0] for r in query(base, "SELECT id FROM rejects WHERE code = 'llm_invalid_reply'").rows}
    assert len(invalid) >= 3, "the faulty server should have made rejects"
    old_rows = {r[0] for r in query(base, "SELECT id FROM cot").rows}

    second = tmp_path / "stgr-cot-llm-v2.yaml"
    prompt = yaml.safe_load((Path(__file__).parents[1] / "prompts" / "stgr-cot-llm.yaml").read_text())
    prompt.update({"name": "stgr-cot-llm-v2", "description": prompt["description"] + " (second version)"})
    second.write_text(yaml.safe_dump(prompt))
    with serve_llm() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        result = CliRunner().invoke(
            app,
            [
                "reannotate",
                str(base),
                "--where",
                "code = 'llm_invalid_reply'",
                "--prompt",
                str(second),
                "--model",
                "stgr-dry-run",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        assert server.stats()["by_schema"] == {"stgr_cot_reply": len(invalid)}  # the rejects alone are asked
    assert f"of them {len(invalid)} were rejected samples: {len(invalid)} fixed" in result.output

    version = json.loads((out / "manifest.json").read_text())["reannotation"]
    assert version["selected"] == version["rejects_selected"] == len(invalid)
    new_rows = _rows(out, "cot", CotRow)
    assert set(new_rows) == old_rows | invalid  # every reject fixed became a row; no row lost
    for row_id in invalid:
        assert new_rows[row_id].provenance.prompt_name == "stgr-cot-llm-v2"
    assert not query(out, "SELECT id FROM rejects WHERE code = 'llm_invalid_reply'").rows
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0

    tables = {t.title: t for t in compare(out)}
    fixed = tables["Rejects fixed"]
    by_code = {row[1]: dict(zip(fixed.columns, row, strict=False)) for row in fixed.rows}
    assert by_code["llm_invalid_reply"]["fixed"] == len(invalid)
    assert by_code["llm_invalid_reply"]["still_rejected"] == 0
    assert rejects_fixed(out) == len(invalid)
    changed = {
        row[0]: dict(zip(tables["Rows changed"].columns, row, strict=False)) for row in tables["Rows changed"].rows
    }
    assert changed["cot"]["added"] == len(invalid) and changed["cot"]["removed"] == 0
    # A predicate over a column of neither view is still a one-line error.
    bad = CliRunner().invoke(
        app,
        [
            "reannotate",
            str(base),
            "--where",
            "no_such_column = 1",
            "--prompt",
            "template-cot",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code != 0 and "over the rejects" in str(bad.exception)
