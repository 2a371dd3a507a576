"""An HTML gallery of sampled rows: key frames with their boxes drawn, the trace with its
tags highlighted. One file; the images are linked relative to it (or embedded).

    stgr audit outputs/demo --gallery outputs/demo-gallery.html

>>> write_gallery(Path("outputs/demo"), Path("gallery.html"), n=12)   # doctest: +SKIP
12

The page reports, once loaded, how many of its images decoded (``#status`` and the body's
``data-images-loaded`` / ``data-images-total``), so a broken link shows at a glance.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from pathlib import Path

from stgr_builder.audit.views import check_read_only, connect
from stgr_builder.core.files import atomic_write_text
from stgr_builder.errors import StgrError

_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.row { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 1em; margin: 0 0 1.5em; }
.meta { color: #666; font-size: 12px; }
.frames { display: flex; flex-wrap: wrap; gap: 10px; margin: .6em 0; }
figure { margin: 0; }
.frame { position: relative; display: inline-block; line-height: 0; }
.frame img { max-width: 320px; max-height: 240px; display: block; }
.box { position: absolute; border: 2px solid; box-sizing: border-box; }
.box span { position: absolute; top: -1.3em; left: -2px; font-size: 11px; line-height: 1.2; color: #fff;
            padding: 0 3px; white-space: nowrap; }
figcaption { font-size: 12px; color: #444; line-height: 1.4; }
.trace { white-space: pre-wrap; background: #f4f4f4; padding: .6em; border-radius: 4px; }
.tag-obj { background: #ffe08a; } .tag-box { background: #b8e0ff; } .tag-t { background: #c9f2c1; }
.answer { font-weight: 600; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-total', imgs.length);
  document.getElementById('status').textContent = ok + ' of ' + imgs.length + ' images loaded';
});
"""

_TAGGED = re.compile(r"&lt;(obj|box|t)&gt;(.*?)&lt;/\1&gt;")


def highlight(trace: str) -> str:
    """The trace as HTML: escaped, each ``<obj>``, ``<box>``, ``<t>`` element in a coloured span.

    >>> print(highlight("a <obj>dog</obj><box>[0.1, 0.2, 0.3, 0.4]</box>at<t>2.0</t>s").replace("</span>", "</span>\n"))
    a <span class="tag-obj">&lt;obj&gt;dog&lt;/obj&gt;</span>
    <span class="tag-box">&lt;box&gt;[0.1, 0.2, 0.3, 0.4]&lt;/box&gt;</span>
    at<span class="tag-t">&lt;t&gt;2.0&lt;/t&gt;</span>
    s
    """
    escaped = html.escape(trace, quote=False)
    return _TAGGED.sub(lambda m: f'<span class="tag-{m.group(1)}">{m.group(0)}</span>', escaped)


def _color(name: str) -> str:
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def _src(root: Path, rel: str, page_dir: Path, embed: bool) -> str:
    path = root / rel
    if embed:
        return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return Path(os.path.relpath(path, page_dir)).as_posix()


def _row_html(row: dict, root: Path, page_dir: Path, embed: bool) -> str:
    items_by_frame: dict[int, list] = {}
    for item in row["key_items"] or []:
        items_by_frame.setdefault(item["idx"], []).append(item)
    figures = []
    for frame in row["key_frames"] or []:
        boxes = []
        for item in items_by_frame.get(frame["idx"], []):
            color = _color(item["name"])
            for x1, y1, x2, y2 in item["boxes"]:
                boxes.append(
                    f'<div class="box" style="left:{x1 * 100:.2f}%;top:{y1 * 100:.2f}%;'
                    f'width:{(x2 - x1) * 100:.2f}%;height:{(y2 - y1) * 100:.2f}%;border-color:{color}">'
                    f'<span style="background:{color}">{html.escape(item["name"])}</span></div>'
                )
        src = html.escape(_src(root, frame["path"], page_dir, embed))
        figures.append(
            f'<figure><div class="frame"><img src="{src}" alt="frame {frame["idx"]}">{"".join(boxes)}</div>'
            f"<figcaption>frame {frame['idx']} at {frame['time']:.2f}s</figcaption></figure>"
        )
    media = row.get("video_path") or row.get("image_path") or ""
    prov = row["provenance"] or {}
    return (
        f'<section class="row" id="row-{html.escape(row["id"])}">'
        f'<div class="meta">{html.escape(row["id"])} · {html.escape(row["task"])} · {html.escape(row["source"])}'
        f" · {html.escape(media)} · prompt {html.escape(str(prov.get('prompt_name')))}@"
        f"{html.escape(str(prov.get('prompt_version')))} · build {html.escape(str(prov.get('build_id')))}</div>"
        f'<p class="question">{html.escape(row["question"]).replace(chr(10), "<br>")}</p>'
        f'<div class="frames">{"".join(figures)}</div>'
        f'<div class="trace">{highlight(row.get("reasoning_process") or "")}</div>'
        f'<p class="answer">Answer: {highlight(row["answer"])}</p></section>'
    )


def write_gallery(
    root: Path, out: Path, *, n: int = 24, seed: int = 0, where: str | None = None, embed: bool = False
) -> int:
    """Write an HTML page of ``n`` rows of ``cot`` sampled by a seeded hash of their id
    (optionally only those a SQL predicate selects); returns how many rows it shows."""
    root, out = Path(root).resolve(), Path(out).resolve()
    sql = f"SELECT * FROM cot {f'WHERE ({where})' if where else ''} ORDER BY hash(id || '{int(seed)}') LIMIT {int(n)}"
    check_read_only(sql)
    con = connect(root)
    try:
        cursor = con.execute(sql)
        columns = [c[0] for c in cursor.description]
        rows = [dict(zip(columns, values, strict=False)) for values in cursor.fetchall()]
    except Exception as exc:  # duckdb.Error
        raise StgrError(f"gallery query failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()
    body = "".join(_row_html(row, root, out.parent, embed) for row in rows)
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>stgr gallery: {html.escape(root.name)}</title>'
        f'<style>{_STYLE}</style></head><body data-images-loaded="0" data-images-total="0">'
        f'<h1>{html.escape(root.name)}: {len(rows)} sampled rows</h1><p id="status">loading images...</p>'
        f"{body}<script>{_SCRIPT}</script></body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return len(rows)
