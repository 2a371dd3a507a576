"""Audits of the evidence itself: the track gate's verdicts, and every evidence box against the
ground truth where a source has it (the demo generator's ``truth.json``).

A mean IoU hides a few zeros, so the truth table counts *wrong* boxes: an evidence box is right
when it overlaps (IoU >= 0.5) a true object of its name on that frame, and wrong otherwise.

>>> [t.title[:22] for t in evidence_tables(connect(root), load_manifest(root))]  # doctest: +SKIP
['Evidence tracks (track', 'Evidence against truth', 'Wrong evidence boxes (']
"""

from __future__ import annotations

from pathlib import Path

import duckdb
from pydantic import ValidationError

from stgr_builder.audit.views import AuditTable
from stgr_builder.core.geometry import box_iou
from stgr_builder.models import DemoTruth, Manifest, TruthImage, TruthVideo

TRUTH_FILE = "truth.json"
RIGHT_IOU = 0.5

_TRACKS = """
SELECT t.gold, t.confirmed, count(*) AS boxes, min(t.length) AS min_length, median(t.length) AS median_length,
       min(t.label_agreement) AS min_agreement, round(avg(t.label_agreement), 3) AS mean_agreement
FROM (SELECT unnest(provenance.evidence_tracks) AS t FROM cot) GROUP BY ALL ORDER BY ALL
"""


def evidence_tables(con: duckdb.DuckDBPyConnection, manifest: Manifest | None) -> list[AuditTable]:
    """The track gate's verdicts on the rows' evidence, and the evidence against truth."""
    cursor = con.execute(_TRACKS)
    tables = [
        AuditTable(
            "Evidence tracks (track gate verdicts on the CoT rows' evidence)",
            [c[0] for c in cursor.description],
            cursor.fetchall(),
        )
    ]
    truth = load_truths(manifest)
    if truth:
        tables += truth_tables(con, truth)
    return tables


def load_truths(manifest: Manifest | None) -> dict[str, DemoTruth]:
    """The ``truth.json`` beside each source file that has one, by source name."""
    if manifest is None or manifest.config_dir is None:
        return {}
    found = {}
    for source in manifest.config.get("sources", []):
        path = Path(manifest.config_dir) / source.get("path", "")
        truth_file = path.parent / TRUTH_FILE
        try:
            found[source["name"]] = DemoTruth.model_validate_json(truth_file.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError, KeyError):
            continue
    return found


def judge(truths: dict[str, DemoTruth], rows: list[tuple]) -> list[tuple[str, str, int, str, float]]:
    """(id, media, frame idx, name, IoU with the best true box of that name) per evidence box of
    the rows ``(id, source, video_path, image_path, key_items)`` whose source has truth."""
    media: dict[str, TruthVideo | TruthImage] = {}
    for truth in truths.values():
        media.update({video.path: video for video in truth.videos})
        media.update({image.path: image for image in truth.images})
    judged = []
    for row_id, _source, video_path, image_path, key_items in rows:
        item_of = media.get(video_path or image_path)
        if item_of is None:
            continue
        size = (item_of.width, item_of.height)
        for item in key_items:
            if isinstance(item_of, TruthVideo):  # found by its video_path
                truths_px = [
                    o.boxes[item["idx"]]
                    for o in item_of.objects
                    if o.name == item["name"] and item["idx"] < len(o.boxes) and o.boxes[item["idx"]]
                ]
            else:
                truths_px = [o.box for o in item_of.objects if o.name == item["name"]]
            true_boxes = [[b[0] / size[0], b[1] / size[1], b[2] / size[0], b[3] / size[1]] for b in truths_px]
            for box in item["boxes"]:
                best = max((box_iou(box, t) for t in true_boxes), default=0.0)
                judged.append((row_id, video_path or image_path, item["idx"], item["name"], best))
    return judged


def truth_tables(con: duckdb.DuckDBPyConnection, truths: dict[str, DemoTruth]) -> list[AuditTable]:
    out_rows, wrong_rows = [], []
    for view in ("cot", "rl"):
        rows = con.execute(f"SELECT id, source, video_path, image_path, key_items FROM {view}").fetchall()
        judged = judge(truths, rows)
        wrong = [j for j in judged if j[4] < RIGHT_IOU]
        ious = [j[4] for j in judged]
        out_rows.append(
            (
                view,
                len(judged),
                len(wrong),
                round(1 - len(wrong) / len(judged), 4) if judged else None,
                round(sum(ious) / len(ious), 3) if ious else None,
                round(min(ious), 3) if ious else None,
            )
        )
        if view == "cot":
            wrong_rows = [(i, m, idx, name, round(iou, 3)) for i, m, idx, name, iou in sorted(wrong)[:20]]
    return [
        AuditTable(
            f"Evidence against truth (right: IoU >= {RIGHT_IOU} with a true object of its name)",
            ["view", "boxes", "wrong", "precision", "mean_iou", "min_iou"],
            out_rows,
        ),
        AuditTable("Wrong evidence boxes (CoT, first 20)", ["id", "media", "frame", "name", "iou"], wrong_rows),
    ]
