"""The corpus of bad inputs (tests/fixtures/bad/): what each file is, how it is made, and what
a build must make of it. ``tests/fixtures/bad/README.md`` lists the cases for a reader.

Small files are checked in under ``tests/fixtures/bad/`` (``write_static`` regenerates them
byte for byte); media that depend on a generated demo (a rotated copy of one of its videos)
are made at test time by ``add_bad_items``.

>>> expected = add_bad_items(Path("demo_source_folder"))   # doctest: +SKIP
>>> expected["bad#text-jpg"]
'not_an_image'
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import av
import numpy as np
from PIL import Image

BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad"  # tests/fixtures
BOM = b"\xef\xbb\xbf"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header announcing width x height pixels (3.6 G) with almost no data: a
    decompression bomb as far as anything that trusts the header is concerned."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    """The first half of a 96x64 JPEG: the header reads, the pixels do not."""
    rgb = (np.arange(96 * 64 * 3, dtype=np.uint32) % 251).astype(np.uint8).reshape(64, 96, 3)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


STATIC = {
    "text.jpg": lambda: b"this is a text file, not a JPEG\n",
    "huge.png": huge_png,
    "truncated.jpg": truncated_jpeg,
}


def write_static(folder: Path = BAD) -> None:
    """(Re)write the checked-in files of the corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in STATIC.items():
        (folder / name).write_bytes(make())


def rotated_copy(source: Path, target: Path, degrees: int = 90) -> None:
    """``source`` re-encoded with a display matrix asking players to rotate it by ``degrees``
    (what phones write), frames unchanged."""
    with av.open(str(source)) as inp, av.open(str(target), mode="w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height = stream_in.codec_context.width, stream_in.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        for frame in inp.decode(stream_in):
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def add_bad_items(folder: Path, demo_file: str = "demo_source.jsonl") -> dict[str, str]:
    """Put one of each bad item into a generated demo source at ``folder`` (media included, a
    BOM at the start of the file); return source id -> the reject code it must end in.

    Every good item is left as it was, so a build must give exactly the rows it gave before.
    """
    media = folder / "media"
    for name in STATIC:
        shutil.copy(BAD / name, media / "images" / name)
    (media / "videos" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (media / "videos" / "empty.mp4").write_bytes(b"")
    good = [json.loads(line) for line in (folder / demo_file).read_text().splitlines()]
    video = next(item for item in good if item["task"] == "temporal QA")
    image = next(item for item in good if item["task"] == "visual QA")

    def item(template: dict, source_id: str, **changes) -> str:
        return json.dumps({**template, "id": source_id, "question": f"{template['question']} ({source_id})", **changes})

    cases = {
        "bad#corrupt": ("media_corrupt", item(video, "bad#corrupt", video="videos/corrupt.mp4")),
        "bad#empty": ("media_empty", item(video, "bad#empty", video="videos/empty.mp4")),
        "bad#missing": ("media_missing", item(video, "bad#missing", video="videos/missing.mp4")),
        "bad#escape": ("unsafe_path", item(video, "bad#escape", video="../../outside.mp4")),
        "bad#text-jpg": ("not_an_image", item(image, "bad#text-jpg", image="images/text.jpg")),
        "bad#mp4-as-image": ("not_an_image", item(image, "bad#mp4-as-image", image=video["video"])),
        "bad#truncated-jpg": ("media_corrupt", item(image, "bad#truncated-jpg", image="images/truncated.jpg")),
        "bad#huge-png": ("media_too_large", item(image, "bad#huge-png", image="images/huge.png")),
        # the same source id as a good record, another question: the good one (first) stays
        video["id"]: ("duplicate_id", item(video, video["id"], question="A different question?")),
        "bad#long-question": ("malformed_row", item(video, "bad#long-question", question="why? " * 1000)),
        "bad#negative-span": ("malformed_row", item(video, "bad#negative-span", span=[-3.0, 2.0])),
        "bad#markup-path": ("media_missing", item(video, "bad#markup-path", video="videos/[bold red]x[/x].mp4")),
        "bad#json": ("malformed_row", '{"id": "bad#json", "task": "temporal QA", "question": '),
        "bad#fields": ("malformed_row", json.dumps({"id": "bad#fields", "task": "temporal QA"})),
    }
    data = (folder / demo_file).read_bytes()
    lines = "\n".join(line for _, line in cases.values()) + "\n"
    (folder / demo_file).write_bytes(BOM + data + lines.encode("utf-8"))
    return {key: code for key, (code, _) in cases.items()}


def source_id_of(line: str) -> str:
    """The id of a source line, or the bad-JSON marker."""
    try:
        return json.loads(line.lstrip("\ufeff"))["id"]
    except (ValueError, KeyError):
        return "bad#json"


if __name__ == "__main__":
    write_static()


# Bad records at scale: made by the library's testing kit (bench/bad_records.py uses them too).
from stgr_builder.testing.bad_records import (  # noqa: E402
    BAD_RECORD_CODES,
    BAD_RECORD_KINDS,
    bad_record_lines,
    write_bad_records_source,
)

__all__ = ["BAD_RECORD_CODES", "BAD_RECORD_KINDS", "bad_record_lines", "write_bad_records_source"]
