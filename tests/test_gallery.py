"""The HTML gallery, rendered by headless Chromium (Debian's chromium package): the page shows
its key-frame images, with boxes drawn and the trace's tags highlighted."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stgr_builder.audit import query
from stgr_builder.cli import app

from helpers.small_demo import small_build

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path) -> str:
    """The DOM of ``page`` after load, from headless Chromium (closed network: no background fetches)."""
    profile = tempfile.mkdtemp(prefix="stgr-chromium-")
    try:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return done.stdout


def _loaded(dom: str) -> tuple[int, int]:
    body = re.search(r'<body[^>]*data-images-loaded="(\d+)"[^>]*data-images-total="(\d+)"', dom)
    assert body, dom[:500]
    return int(body.group(1)), int(body.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it when run as root)")
def test_the_gallery_shows_key_frames_with_boxes_and_highlighted_traces(tmp_path_factory, tmp_path):
    _, out = small_build(tmp_path_factory)
    page = tmp_path / "report" / "gallery.html"
    result = CliRunner().invoke(app, ["audit", str(out), "--gallery", str(page), "--n", "6"])
    assert result.exit_code == 0, result.output
    dom = render(page)
    loaded, total = _loaded(dom)
    frames = query(out, "SELECT sum(len(key_frames)) FROM (SELECT * FROM cot ORDER BY hash(id || '0') LIMIT 6)")
    assert total == frames.rows[0][0] > 0
    assert loaded == total  # every key frame decoded and shown
    assert f"{loaded} of {total} images loaded" in dom
    assert dom.count('class="box"') >= total  # at least one box drawn per key frame
    assert 'class="tag-obj"' in dom and 'class="tag-t"' in dom and 'class="tag-box"' in dom

    # The check can fail: the same page moved away from its images shows none of them.
    moved = tmp_path / "elsewhere" / "deeper" / "gallery.html"
    moved.parent.mkdir(parents=True)
    moved.write_text(page.read_text())
    assert _loaded(render(moved)) == (0, total)


def test_the_audit_shows_box_area_and_aspect_distributions(tmp_path_factory):
    from stgr_builder.audit.compare import distributions

    _, out = small_build(tmp_path_factory)
    boxes = query(
        out, "SELECT count(*) FROM (SELECT unnest(item.boxes) FROM (SELECT unnest(key_items) AS item FROM cot))"
    ).rows[0][0]
    tables = {t.title: t for t in distributions(out)}
    for title in ("Box area distribution", "Box aspect-ratio distribution"):
        cot = [row for row in tables[title].rows if row[0] == "cot"]
        assert sum(row[2] for row in cot) == boxes > 0
        assert abs(sum(row[3] for row in cot) - 1) < 0.01
    result = CliRunner().invoke(app, ["audit", str(out)])
    assert result.exit_code == 0 and "Box area distribution" in result.output
