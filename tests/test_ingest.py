"""Ingest: stable ids, duplicates, malformed rows, unsafe paths, limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stgr_builder.errors import StgrError
from stgr_builder.models import BuildConfig, DatasetName, RejectCode, Stage, sample_id
from stgr_builder.sources import ingest


def _item(i: int, **over) -> dict:
    item = {
        "id": f"v{i}#0",
        "task": "temporal QA",
        "question": f"When is the ball visible in clip {i}?",
        "options": [],
        "answer": "[1.0, 2.5]",
        "video": f"videos/v{i}.mp4",
        "span": [1.0, 2.5],
        "objects": ["ball"],
        "caption": "A ball bounces.",
    }
    item.update(over)
    return item


def _write(path: Path, lines: list) -> None:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def _config(*sources: dict) -> BuildConfig:
    return BuildConfig(sources=[{"adapter": "demo", "media_root": "media", **s} for s in sources])


@pytest.fixture()
def root(tmp_path) -> Path:
    (tmp_path / "media" / "videos").mkdir(parents=True)
    return tmp_path


def test_ids_are_stable_hashes_and_order_is_by_id(root):
    _write(root / "a.jsonl", [_item(i) for i in range(5)])
    samples, rejects, stats = ingest(_config({"name": "STR_a", "path": "a.jsonl"}), root)
    assert rejects == [] and (stats.seen, stats.kept) == (5, 5) and stats.step == "ingest"
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    for s in samples:
        assert s.id == sample_id("STR_a", s.source_id, s.question)
        assert s.source == "STR_a" and Path(s.media_root) == (root / "media").resolve()
        assert s.origin.startswith("a.jsonl:")

    # Reversed file order, another working folder: the same ids.
    other = root / "elsewhere"
    (other / "media").mkdir(parents=True)
    _write(other / "a.jsonl", [_item(i) for i in reversed(range(5))])
    again, _, _ = ingest(_config({"name": "STR_a", "path": "a.jsonl"}), other)
    assert [s.id for s in again] == [s.id for s in samples]
    # Another source name gives other ids.
    renamed, _, _ = ingest(_config({"name": "STR_b", "path": "a.jsonl"}), other)
    assert not {s.id for s in renamed} & {s.id for s in samples}


def test_fields_map_onto_source_sample(root):
    mcq = _item(
        1,
        task="temporal QA (MCQ)",
        question="Which appears?",
        options=["car", "ball"],
        answer="B\n[1.0, 2.5]",
        objects=["ball", {"name": "car", "boxes": [{"time": 1.0, "box": [0.1, 0.1, 0.3, 0.4]}]}],
    )
    still = {
        "id": "i0#0",
        "task": "visual QA",
        "question": "Where is the dog?",
        "options": [],
        "answer": "<obj>dog</obj><box>[1, 2, 30, 40]</box>",
        "image": "images/i0.jpg",
        "span": None,
        "objects": ["dog"],
    }
    _write(root / "a.jsonl", [mcq, still])
    config = _config({"name": "STR_a", "path": "a.jsonl", "datasets": ["rl"]})
    samples, rejects, _ = ingest(config, root)
    assert rejects == []
    by_id = {s.source_id: s for s in samples}
    assert by_id["v1#0"].options == ["car", "ball"] and by_id["v1#0"].answer == "B\n[1.0, 2.5]"
    assert [o.name for o in by_id["v1#0"].objects] == ["ball", "car"] and by_id["v1#0"].objects[1].boxes[0].time == 1.0
    assert by_id["i0#0"].image_path == "images/i0.jpg" and by_id["i0#0"].video_path is None
    assert all(s.datasets == [DatasetName.RL] for s in samples)


def test_duplicates_are_dropped_with_a_reason(root):
    _write(root / "a.jsonl", [_item(1), _item(2), _item(1)])  # line 3 repeats line 1
    # source b asks the same question about the same file as source a
    _write(root / "b.jsonl", [_item(9, id="other#7", video="videos/v2.mp4", question=_item(2)["question"]), _item(3)])
    config = _config({"name": "STR_a", "path": "a.jsonl"}, {"name": "STR_b", "path": "b.jsonl"})
    samples, rejects, stats = ingest(config, root)
    assert sorted(s.source_id for s in samples) == ["v1#0", "v2#0", "v3#0"]
    assert [(r.code, r.stage, r.origin) for r in rejects] == [
        (RejectCode.DUPLICATE, Stage.INGEST, "a.jsonl:3"),
        (RejectCode.DUPLICATE, Stage.INGEST, "b.jsonl:1"),
    ]
    kept_ids = {s.id for s in samples}
    assert not kept_ids & {r.id for r in rejects}, "a reject never shares its id with a kept row"
    assert "a.jsonl:1" in rejects[0].message and "same media file and question" in rejects[1].message
    assert stats.seen == 5 and stats.kept == 3 and stats.rejected == {"duplicate": 2}


def test_malformed_rows_are_rejects_with_file_and_line(root):
    lines = [
        json.dumps(_item(1)),
        "{not json",
        "",  # blank lines are skipped, but still count for line numbers
        json.dumps([1, 2]),
        json.dumps(_item(4, task="temporal QA extra")),
        json.dumps({k: v for k, v in _item(5).items() if k != "answer"}),
        json.dumps(_item(6, image="images/x.jpg")),  # both video and image
        json.dumps(_item(7, answer="1.0 to 2.5")),  # not the "[s, e]" form
        json.dumps(_item(8, task="General video QA MCQ", options=["a", "b"], answer="C", span=None)),
        json.dumps(_item(9, unknown_field=1)),
        json.dumps(_item(10)),
    ]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    samples, rejects, stats = ingest(_config({"name": "STR_a", "path": "a.jsonl"}), root)
    assert sorted(s.source_id for s in samples) == ["v1#0", "v10#0"]
    by_origin = {r.origin: r for r in rejects}
    assert sorted(by_origin, key=lambda o: int(o.split(":")[1])) == [
        "a.jsonl:2",
        "a.jsonl:4",
        "a.jsonl:5",
        "a.jsonl:6",
        "a.jsonl:7",
        "a.jsonl:8",
        "a.jsonl:9",
        "a.jsonl:10",
    ]
    assert all(r.code is RejectCode.MALFORMED_ROW and r.stage is Stage.INGEST and r.source == "STR_a" for r in rejects)
    assert "JSON" in by_origin["a.jsonl:2"].message
    assert "task" in by_origin["a.jsonl:5"].message
    assert "answer" in by_origin["a.jsonl:6"].message
    assert "video" in by_origin["a.jsonl:7"].message and "image" in by_origin["a.jsonl:7"].message
    assert "[s, e]" in by_origin["a.jsonl:8"].message
    assert "unknown_field" in by_origin["a.jsonl:10"].message
    assert by_origin["a.jsonl:2"].id == sample_id("STR_a", "a.jsonl:2", "")
    assert stats.seen == 10 and stats.rejected == {"malformed_row": 8}
    # the same bad file gives the same reject ids
    _, again, _ = ingest(_config({"name": "STR_a", "path": "a.jsonl"}), root)
    assert [r.id for r in again] == [r.id for r in rejects]


def test_media_paths_must_stay_inside_the_media_root(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.mp4").write_bytes(b"x")
    (root / "media" / "videos" / "link.mp4").symlink_to(outside / "secret.mp4")
    _write(
        root / "a.jsonl",
        [
            _item(1, video="../a.jsonl"),
            _item(2, video="videos/../../a.jsonl"),
            _item(3, video="/etc/passwd"),
            _item(4, video="videos/link.mp4"),
            _item(5, video="videos/./v5.mp4"),
            _item(6, video="C:\\videos\\v6.mp4"),
        ],
    )
    samples, rejects, _ = ingest(_config({"name": "STR_a", "path": "a.jsonl"}), root)
    assert [s.source_id for s in samples] == ["v5#0"]
    assert sorted(r.origin for r in rejects) == [f"a.jsonl:{n}" for n in (1, 2, 3, 4, 6)]
    assert all(r.code is RejectCode.UNSAFE_PATH for r in rejects)
    assert "outside the media root" in next(r for r in rejects if r.origin == "a.jsonl:4").message


def test_symlinked_folders_resolve_by_their_targets(root):
    """The path check and the duplicate key compare resolved paths as strings: a sibling of
    the media root whose name starts with the root's (media2) is outside, a folder linked
    to one inside the root is inside, and the same file reached by two paths is one file."""
    (root / "media2").mkdir()
    (root / "media" / "videos" / "near").symlink_to(root / "media2")
    (root / "media" / "alias").symlink_to(root / "media" / "videos")
    question = "When is the ball visible in clip 8?"
    _write(
        root / "a.jsonl",
        [
            _item(7, video="videos/near/v7.mp4"),
            _item(8, video="alias/v8.mp4", question=question),
            _item(9, video="videos/v8.mp4", question=question),
        ],
    )
    samples, rejects, _ = ingest(_config({"name": "STR_a", "path": "a.jsonl"}), root)
    assert [s.source_id for s in samples] == ["v8#0"]
    by_origin = {r.origin: r for r in rejects}
    assert by_origin["a.jsonl:1"].code is RejectCode.UNSAFE_PATH
    assert "outside the media root" in by_origin["a.jsonl:1"].message
    assert by_origin["a.jsonl:3"].code is RejectCode.DUPLICATE
    assert "same media file and question" in by_origin["a.jsonl:3"].message


def test_limit_takes_the_first_items_of_each_source(root):
    _write(root / "a.jsonl", [_item(i) for i in range(10)])
    _write(root / "b.jsonl", [_item(i + 20) for i in range(10)])
    config = _config({"name": "STR_a", "path": "a.jsonl", "limit": 3}, {"name": "STR_b", "path": "b.jsonl"})
    samples, rejects, stats = ingest(config, root)
    assert sorted(s.source_id for s in samples if s.source == "STR_a") == ["v0#0", "v1#0", "v2#0"]
    assert len([s for s in samples if s.source == "STR_b"]) == 10
    assert stats.seen == 13 and rejects == []


def test_a_missing_annotation_file_is_a_config_error(root):
    with pytest.raises(StgrError, match="annotation file not found.*nope.jsonl"):
        ingest(_config({"name": "STR_a", "path": "nope.jsonl"}), root)
    _write(root / "a.jsonl", [_item(1)])
    with pytest.raises(StgrError, match="media_root"):
        ingest(_config({"name": "STR_a", "path": "a.jsonl", "media_root": "no-such-dir"}), root)
