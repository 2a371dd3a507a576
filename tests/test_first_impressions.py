"""What a newcomer sees first: ``stgr --help`` says what the tool does for a user, the audit
printed after a build fits a screen and leaves out the sections with nothing to say, and no
third-party notice gets in the way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stgr_builder.audit import summary
from stgr_builder.cli import app

from helpers.small_demo import small_build

ROOT = Path(__file__).resolve().parents[1]


def test_help_says_what_the_tool_does_for_a_user():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Build grounded chain-of-thought datasets (STGR-CoT, STGR-RL) for video reasoning models" in text
    assert "`stgr demo`" in text and "`stgr build CONFIG.yaml`" in text and "`stgr audit DIR`" in text
    assert "only module that prints" not in text  # the module's docstring, written for its readers


@pytest.mark.slow  # imports Ultralytics in a subprocess
def test_the_detector_prints_no_ultralytics_settings_notice(tmp_path):
    # Ultralytics announces the settings file it writes on its first import in a config folder.
    env = {key: value for key, value in os.environ.items() if key != "YOLO_VERBOSE"}
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "fresh"), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", "import stgr_builder.detect.yolo, ultralytics"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fresh" / "Ultralytics" / "settings.json").is_file()  # the notice's moment came
    assert "Ultralytics" not in done.stdout + done.stderr


@pytest.mark.slow
def test_the_brief_audit_fits_a_screen_and_no_audit_prints_an_empty_section(tmp_path_factory):
    _, out = small_build(tmp_path_factory)
    runner = CliRunner()
    brief = runner.invoke(app, ["audit", str(out), "--brief"])
    assert brief.exit_code == 0, brief.output
    assert len(brief.output.splitlines()) <= 40, brief.output
    assert "Rows by task and source" in brief.output and "Evidence against truth" in brief.output
    assert "Checks: all 9 pass" in brief.output and "Provenance" not in brief.output
    assert f"stgr audit {out}" in " ".join(brief.output.split())  # where the rest is
    full = runner.invoke(app, ["audit", str(out)])
    assert full.exit_code == 0, full.output
    assert "Provenance" in full.output and "Box area distribution" in full.output
    empty = [table.title.split(" (")[0] for table in summary(out) if not table.rows]
    assert "Rejects by stage and code" in empty and "LLM cost" in empty  # a template build without rejects
    assert [title for title in empty if title in full.output] == []
