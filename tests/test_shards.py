"""The write stage: shards with one schema per dataset, readable everywhere, written atomically,
resumable by checksum, and described by a manifest without secrets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stgr_builder.core.arrow import DATASETS, arrow_type, rows_to_table, schema_for, table_to_rows
from stgr_builder.core.hashing import digest as config_hash
from stgr_builder.core.hashing import sha256_file
from stgr_builder.core.layout import load_manifest, record_path, shard_path
from stgr_builder.errors import StgrError
from stgr_builder.models import (
    CotRow,
    KeyFrame,
    KeyItem,
    PromptRef,
    Provenance,
    Reject,
    RejectCode,
    RlRow,
    Stage,
    StepStats,
    Task,
    sample_id,
)
from stgr_builder.shards import clean_temp_files, finished_shard, read_table, write_manifest, write_shard

# ---------------------------------------------------------------------------------------
# A small hand-made dataset: every task type, an image row, several boxes per key item
# ---------------------------------------------------------------------------------------

PROV = dict(
    prompt_name="template-cot",
    prompt_version="p1a2b3",
    annotator_model="template",
    detector_name="yolo11n",
    detector_weights_hash="w9f8e7",
    build_id="build-1",
)


def _row(
    source: str,
    task: Task,
    question: str,
    answer: str,
    trace: str,
    frames: list[tuple[int, float]],
    items: list[tuple[int, str, list[list[float]]]],
    **extra,
) -> tuple[CotRow, RlRow]:
    fields = dict(
        id=sample_id(source, question[:8], question),
        task=task,
        source=source,
        question=question,
        answer=answer,
        key_frames=[KeyFrame(idx=i, time=t, path=f"kfs/{source}/{i:06d}.jpg") for i, t in frames],
        key_items=[KeyItem(idx=i, name=name, boxes=boxes) for i, name, boxes in items],
        provenance=Provenance(**PROV, detector_score=0.8, detector_agreement_iou=extra.pop("iou", None)),
        **extra,
    )
    if "image_path" not in fields:
        fields["video_path"] = f"videos/{fields['id']}.mp4"
    return CotRow(**fields, reasoning_process=trace), RlRow(**fields)


def example_rows() -> list[tuple[CotRow, RlRow]]:
    """Six rows, one per task type."""
    return [
        _row(
            "STR_activitynet",
            Task.SPATIO_TEMPORAL,
            "What does the man throw?",
            "a red ball",
            "<obj>man</obj><box>[0.1, 0.2, 0.3, 0.9]</box><box>[0.5, 0.2, 0.7, 0.9]</box>at<t>2.0</t>s "
            "then <obj>ball</obj><box>[0.4, 0.1, 0.45, 0.16]</box>at<t>4.5</t>s.",
            [(48, 2.0), (108, 4.5)],
            [(48, "man", [[0.1, 0.2, 0.3, 0.9], [0.5, 0.2, 0.7, 0.9]]), (108, "ball", [[0.4, 0.1, 0.45, 0.16]])],
            iou=0.71,
        ),
        _row(
            "TVG_charades",
            Task.TEMPORAL,
            "When does the person open the door?",
            "[3.0, 7.5]",
            "The door moves from <t>3.0</t>s to <t>7.5</t>s; "
            "<obj>door</obj><box>[0.6, 0.1, 0.9, 0.95]</box>at<t>5.0</t>s.",
            [(120, 5.0)],
            [(120, "door", [[0.6, 0.1, 0.9, 0.95]])],
        ),
        _row(
            "TVG_charades",
            Task.TEMPORAL_MCQ,
            "When is the light on?\nA. [0.0, 2.0]\nB. [3.0, 7.5]",
            "B\n[3.0, 7.5]",
            "<obj>lamp</obj><box>[0.2, 0.2, 0.3, 0.4]</box>at<t>4.0</t>s glows from <t>3.0</t>s to <t>7.5</t>s.",
            [(96, 4.0)],
            [(96, "lamp", [[0.2, 0.2, 0.3, 0.4]])],
        ),
        _row(
            "STR_gqa",
            Task.VISUAL,
            "Where is the cat?",
            "<obj>cat</obj><box>[64, 48, 320, 240]</box>",
            "The <obj>cat</obj><box>[64, 48, 320, 240]</box> sits on the sofa.",
            [(0, 0.0)],
            [(0, "cat", [[0.1, 0.1, 0.5, 0.5]])],
            image_path="images/cat.jpg",
            image_size=[640, 480],
        ),
        _row(
            "videor1_mcq",
            Task.VIDEO_MCQ,
            "What colour is the car?\nA. red\nB. blue\nC. green",
            "C",
            "<obj>car</obj><box>[0.3, 0.5, 0.6, 0.8]</box><box>[0.7, 0.5, 0.9, 0.7]</box>at<t>1.2</t>s is green.",
            [(30, 1.2)],
            [(30, "car", [[0.3, 0.5, 0.6, 0.8], [0.7, 0.5, 0.9, 0.7]])],
        ),
        _row(
            "videor1_free",
            Task.VIDEO_FREE,
            "What is the dog doing?",
            "running",
            "<obj>dog</obj><box>[0.1, 0.6, 0.3, 0.9]</box>at<t>0.5</t>s and <obj>dog</obj>"
            "<box>[0.4, 0.6, 0.6, 0.9]</box>at<t>1.5</t>s: it runs.",
            [(12, 0.5), (36, 1.5)],
            [(12, "dog", [[0.1, 0.6, 0.3, 0.9]]), (36, "dog", [[0.4, 0.6, 0.6, 0.9]])],
        ),
    ]


def example_shards() -> dict[int, dict]:
    """Shard 0: three rows and a reject; shard 1: three rows; shard 2: only a rejected sample
    (its cot and rl files are empty), shard 1's rejects file is empty."""
    rows = example_rows()
    rejected = [
        Reject(id="a" * 16, stage=Stage.VERIFY, code=RejectCode.BOX_TOO_LARGE, message="box covers 91%"),
        Reject(
            id="b" * 16,
            stage=Stage.PROBE,
            code=RejectCode.MEDIA_CORRUPT,
            message="moov atom not found",
            source="TVG_charades",
            origin="charades.txt:7",
        ),
    ]
    stats = lambda seen, kept, rejected: [  # noqa: E731
        StepStats(step="probe", seen=seen, kept=kept, rejected=rejected, seconds=0.5),
        StepStats(step="verify", seen=kept, kept=kept, seconds=0.25),
    ]
    shards = {
        0: (rows[:3], rejected[:1], stats(4, 3, {"box_too_large": 1})),
        1: (rows[3:], [], stats(3, 3, {})),
        2: ([], rejected[1:], stats(1, 0, {"media_corrupt": 1})),
    }
    return {
        shard: dict(
            cot_rows=[c for c, _ in pairs],
            rl_rows=[r for _, r in pairs],
            rejects=rejects,
            sample_ids=[c.id for c, _ in pairs] + [r.id for r in rejects],
            stats=st,
        )
        for shard, (pairs, rejects, st) in shards.items()
    }


def write_example(root: Path) -> dict[int, object]:
    return {shard: write_shard(root, shard, **parts) for shard, parts in example_shards().items()}


def write_example_with_manifest(root: Path):
    results = write_example(root)
    return write_manifest(
        root,
        build_id="build-1",
        code_version="0.1.0",
        config={"name": "demo", "seed": 0, "sharding": {"samples_per_shard": 4}},
        prompts=[PromptRef(name="template-cot", version="p1a2b3")],
        detector={"name": "yolo11n", "weights_hash": "w9f8e7"},
        results=list(results.values()),
    )


# ---------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------


def test_schema_is_derived_from_the_models():
    cot = schema_for(CotRow)
    assert cot.names == list(CotRow.model_fields)
    assert "reasoning_process" not in schema_for(RlRow).names
    assert schema_for(Reject).names == list(Reject.model_fields)

    box = pa.list_(pa.field("item", pa.float64(), nullable=False))
    key_item = pa.struct(
        [
            pa.field("idx", pa.int64(), False),
            pa.field("name", pa.string(), False),
            pa.field("boxes", pa.list_(pa.field("item", box, False)), False),
        ]
    )
    assert cot.field("key_items").type == pa.list_(pa.field("item", key_item, nullable=False))
    assert cot.field("task").type == pa.string()  # Enum -> its exact spelling
    assert cot.field("image_size").nullable and cot.field("image_size").type == pa.list_(
        pa.field("item", pa.int64(), False)
    )
    assert not cot.field("id").nullable
    provenance = cot.field("provenance").type
    assert provenance.field("detector_agreement_iou").nullable
    assert provenance.field("verifier_votes").type == pa.int64()


def test_dict_fields_are_refused_because_maps_break_the_viewer():
    with pytest.raises(TypeError, match="map type"):
        arrow_type(dict[str, int])
    with pytest.raises(TypeError, match="only `X | None`"):
        arrow_type(int | str)


def test_rows_of_the_wrong_model_are_refused():
    cot, rl = example_rows()[0]
    with pytest.raises(TypeError, match="RlRow"):
        rows_to_table([cot, rl], CotRow)


def test_every_shard_has_three_files_with_one_schema_each(tmp_path):
    results = write_example(tmp_path)
    for dataset, model in DATASETS.items():
        schemas = [pq.read_schema(shard_path(tmp_path, dataset, shard)) for shard in results]
        assert all(s.equals(schema_for(model)) for s in schemas), dataset
    rows = {(shard, f.path): f.rows for shard, r in results.items() for f in r.files}
    assert rows[(2, "stgr_cot/part-00002.parquet")] == 0
    assert rows[(1, "rejects/part-00001.parquet")] == 0
    assert rows[(0, "stgr_rl/part-00000.parquet")] == 3
    # zstd, as the spec asks
    assert pq.ParquetFile(shard_path(tmp_path, "stgr_cot", 0)).metadata.row_group(0).column(0).compression == "ZSTD"


def test_rows_round_trip_through_parquet(tmp_path):
    write_example(tmp_path)
    for shard, parts in example_shards().items():
        for dataset, key, model in (
            ("stgr_cot", "cot_rows", CotRow),
            ("stgr_rl", "rl_rows", RlRow),
            ("rejects", "rejects", Reject),
        ):
            back = table_to_rows(pq.read_table(shard_path(tmp_path, dataset, shard)), model)
            assert sorted(back, key=lambda r: r.id) == sorted(parts[key], key=lambda r: r.id)
    image_row = next(r for r in table_to_rows(read_table(tmp_path, "stgr_cot"), CotRow) if r.task == Task.VISUAL)
    assert image_row.image_size == [640, 480] and image_row.video_path is None


def test_duckdb_reads_the_shard_glob_and_unnests_boxes(tmp_path):
    write_example(tmp_path)
    con = duckdb.connect()
    glob = f"read_parquet('{tmp_path}/stgr_cot/part-*.parquet', union_by_name=false)"
    assert con.sql(f"SELECT count(*) FROM {glob}").fetchall()[0][0] == 6
    n_boxes = con.sql(f"""SELECT count(*) FROM (SELECT unnest(item.boxes) AS b
                          FROM (SELECT unnest(key_items) AS item FROM {glob}))""").fetchall()[0][0]
    assert n_boxes == sum(len(i.boxes) for c, _ in example_rows() for i in c.key_items) == 10
    tasks = dict(con.sql(f"SELECT task, count(*) FROM {glob} GROUP BY task").fetchall())
    assert tasks == {task.value: 1 for task in Task}


def test_polars_reads_every_shard_with_the_same_schema(tmp_path):
    write_example(tmp_path)
    for dataset in DATASETS:
        schemas = {str(pl.read_parquet_schema(shard_path(tmp_path, dataset, s))) for s in range(3)}
        assert len(schemas) == 1, dataset
    cot = pl.read_parquet(tmp_path / "stgr_cot" / "part-*.parquet")
    assert cot.height == 6 and cot.columns == schema_for(CotRow).names
    man = cot.filter(pl.col("source") == "STR_activitynet").row(0, named=True)
    assert man["key_items"][0]["boxes"] == [[0.1, 0.2, 0.3, 0.9], [0.5, 0.2, 0.7, 0.9]]
    assert pl.read_parquet(tmp_path / "rejects" / "part-*.parquet").height == 2


def test_shard_bytes_do_not_depend_on_row_order(tmp_path):
    parts = example_shards()[0]
    first = write_shard(tmp_path / "a", 0, **parts)
    shuffled = {k: list(reversed(v)) for k, v in parts.items()}
    second = write_shard(tmp_path / "b", 0, **shuffled)
    assert [f.sha256 for f in first.files] == [f.sha256 for f in second.files]


def test_duplicate_or_foreign_rows_are_refused(tmp_path):
    parts = example_shards()[0]
    with pytest.raises(ValueError, match="twice"):
        write_shard(tmp_path, 0, **{**parts, "cot_rows": parts["cot_rows"] * 2})
    with pytest.raises(ValueError, match="not one of the shard's sample ids"):
        write_shard(tmp_path, 0, **{**parts, "sample_ids": parts["sample_ids"][1:]})


# ---------------------------------------------------------------------------------------
# Resume and atomicity
# ---------------------------------------------------------------------------------------


def test_finished_shard_needs_record_same_ids_and_matching_files(tmp_path):
    results = write_example(tmp_path)
    ids = example_shards()[0]["sample_ids"]
    assert finished_shard(tmp_path, 0, list(reversed(ids))) == results[0]  # order of ids is irrelevant
    assert finished_shard(tmp_path, 0, ids + ["0" * 16]) is None
    assert finished_shard(tmp_path, 5, ids) is None

    part = shard_path(tmp_path, "stgr_rl", 0)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    assert finished_shard(tmp_path, 0, ids) is None

    ids1 = example_shards()[1]["sample_ids"]
    shard_path(tmp_path, "rejects", 1).unlink()
    assert finished_shard(tmp_path, 1, ids1) is None

    ids2 = example_shards()[2]["sample_ids"]
    assert finished_shard(tmp_path, 2, ids2) is not None
    record_path(tmp_path, 2).unlink()
    assert finished_shard(tmp_path, 2, ids2) is None


def test_a_crash_mid_shard_leaves_it_unfinished_and_no_temp_files(tmp_path, monkeypatch):
    parts = example_shards()[0]
    write_shard(tmp_path, 0, **parts)
    real = pq.write_table
    calls = []

    def crash_on_second_file(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        real(table, where, **kwargs)

    monkeypatch.setattr("stgr_builder.shards.writer.pq.write_table", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        write_shard(tmp_path, 0, **parts)
    # The old record went first, so the half-rewritten shard is not taken as done.
    assert not record_path(tmp_path, 0).exists()
    assert finished_shard(tmp_path, 0, parts["sample_ids"]) is None
    assert list(tmp_path.rglob("*.tmp")) == []


def test_temp_files_from_a_killed_run_are_cleaned(tmp_path):
    write_example(tmp_path)
    # What a kill during the write leaves: a complete-looking Parquet file under a temp name.
    stray = tmp_path / "stgr_cot" / ".part-00000.parquet.0123abcd.tmp"
    shutil.copy(shard_path(tmp_path, "stgr_cot", 0), stray)
    other = tmp_path / "stgr_rl" / f".part-00001.parquet.{'9' * 32}.tmp"
    other.write_bytes(b"half a file")
    users = tmp_path / ".notes.tmp"  # a hidden file of the user's: not a writer's temp name
    users.write_text("mine")
    assert read_table(tmp_path, "stgr_cot").num_rows == 6  # never read as a shard

    write_shard(tmp_path, 0, **example_shards()[0])  # rewriting shard 0 cleans only its own
    assert not stray.exists() and other.exists()
    assert clean_temp_files(tmp_path) == [other]
    assert not other.exists() and users.exists()


# ---------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------


def test_manifest_counts_checksums_and_stats(tmp_path):
    manifest = write_example_with_manifest(tmp_path)
    assert manifest.counts == {"stgr_cot": 6, "stgr_rl": 6, "rejects": 2, "samples": 8}
    assert len(manifest.shards) == 9
    for file in manifest.shards:
        assert sha256_file(tmp_path / file.path) == file.sha256
        assert pq.read_metadata(tmp_path / file.path).num_rows == file.rows
    probe = next(s for s in manifest.stats if s.step == "probe")
    assert (probe.seen, probe.kept, probe.rejected) == (8, 6, {"box_too_large": 1, "media_corrupt": 1})
    assert probe.seconds == pytest.approx(1.5)
    assert [s.step for s in manifest.stats] == ["probe", "verify"]
    assert load_manifest(tmp_path) == manifest
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["config_hash"] == config_hash({"sharding": {"samples_per_shard": 4}, "seed": 0, "name": "demo"})
    assert on_disk["config_hash"] != config_hash({"name": "demo", "seed": 1, "sharding": {"samples_per_shard": 4}})
    assert on_disk["prompts"] == [{"name": "template-cot", "version": "p1a2b3"}]


def test_manifest_prunes_files_of_shards_not_in_the_build(tmp_path):
    results = write_example(tmp_path)
    # An earlier build of this folder had a shard 7 (its record lists its files).
    for dataset in DATASETS:
        shutil.copy(shard_path(tmp_path, dataset, 0), shard_path(tmp_path, dataset, 7))
    record = json.loads(record_path(tmp_path, 0).read_text())
    record.update(
        shard=7, files=[{**f, "path": f["path"].replace("part-00000", "part-00007")} for f in record["files"]]
    )
    record_path(tmp_path, 7).write_text(json.dumps(record))
    # A shard killed mid-write: its files are listed by the intent it wrote first.
    shutil.copy(shard_path(tmp_path, "rejects", 0), shard_path(tmp_path, "rejects", 8))
    (tmp_path / "_progress" / "writing-00008.json").write_text(
        json.dumps({"shard": 8, "files": [{"path": "rejects/part-00008.parquet"}]})
    )
    # A part file no record or manifest lists is not ours to delete.
    shutil.copy(shard_path(tmp_path, "stgr_cot", 0), shard_path(tmp_path, "stgr_cot", 9))
    from stgr_builder.ownership import unlisted_shards

    assert unlisted_shards(tmp_path) == ["stgr_cot/part-00009.parquet"]
    write_manifest(
        tmp_path, build_id="b", code_version="0", config={}, prompts=[], detector={}, results=list(results.values())
    )
    assert not any(shard_path(tmp_path, d, 7).exists() for d in DATASETS)
    assert not record_path(tmp_path, 7).exists()
    assert not shard_path(tmp_path, "rejects", 8).exists() and not list((tmp_path / "_progress").glob("writing-*"))
    assert shard_path(tmp_path, "stgr_cot", 9).exists()
    shard_path(tmp_path, "stgr_cot", 9).unlink()
    assert read_table(tmp_path, "stgr_cot").num_rows == 6


def test_manifest_never_holds_an_api_key(tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    results = list(write_example(tmp_path).values())
    with pytest.raises(StgrError, match=r"\$OPENAI_API_KEY") as err:
        write_manifest(
            tmp_path,
            build_id="b",
            code_version="0",
            config={"annotator": {"key": secret}},
            prompts=[],
            detector={},
            results=results,
        )
    assert secret not in str(err.value)
    assert not (tmp_path / "manifest.json").exists()

    write_manifest(
        tmp_path,
        build_id="b",
        code_version="0",
        config={"annotator": {"model": "gpt-4o"}},
        prompts=[],
        detector={},
        results=results,
    )
    assert secret not in (tmp_path / "manifest.json").read_text()


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(StgrError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_read_table_of_an_empty_folder_has_the_schema(tmp_path):
    table = read_table(tmp_path, "stgr_rl")
    assert table.num_rows == 0 and table.schema.equals(schema_for(RlRow))
