"""A staging copy that holds only part of a prefix (``storage/mirror.py``), over real HTTP to moto's
S3 server (``helpers/s3.py``): a scoped pull lists and syncs only its folders and files and leaves
the rest of the copy alone; ``fetch`` brings named objects, a missing one being a miss, and notes
them as synced (a later push uploads none of them again)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from stgr_builder.storage.mirror import Mirror

from helpers.s3_faults import FaultProxy

OBJECTS = {
    "plan.json": b"{}",
    "_progress/shard-00000.json": b'{"shard": 0}',
    "_cache/ratelimit.json": b"{}",
    "_cache/stages/probe/aa/aa1.json": b"probe aa1",
    "_cache/stages/probe/bb/bb2.json": b"probe bb2",
    "kfs/aa/aa1.jpg": b"\xff\xd8 jpeg aa1",
    "stgr_cot/part-00000.parquet": b"PAR1 0",
    "stgr_cot/part-00001.parquet": b"PAR1 1",
}


def _put_all(s3) -> None:
    for rel, data in OBJECTS.items():
        s3.fs.pipe_file(f"{s3.bucket}/ds/{rel}", data)


def _listings(proxy: FaultProxy) -> list[str]:
    """The prefix each LIST request asked for, in order."""
    asked = []
    for method, path, _ in proxy.requests:
        query = parse_qs(urlsplit(path).query)
        if method == "GET" and "list-type" in query:
            asked.append(query.get("prefix", [""])[0])
    return asked


def test_a_scoped_pull_syncs_its_scope_only_and_keeps_the_rest_of_the_copy(s3, tmp_path, monkeypatch):
    _put_all(s3)
    copy = tmp_path / "copy" / "ds"
    kept = copy / "_cache/stages/detect/cc/cc3.json"  # fetched earlier: outside the scope
    kept.parent.mkdir(parents=True)
    kept.write_text("detect cc3")
    stale = copy / "_progress/writing-00001.json"  # in the scope, gone from the bucket
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    with FaultProxy(s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        mirror = Mirror(s3.url("ds"), copy)
        scope = ["plan.json", "_progress/", "_cache/ratelimit.json", "stgr_cot/"]
        pulled = mirror.pull(lambda rel: rel != "stgr_cot/part-00001.parquet", scope=scope)

    assert pulled == ["_cache/ratelimit.json", "_progress/shard-00000.json", "plan.json", "stgr_cot/part-00000.parquet"]
    assert kept.read_text() == "detect cc3" and not stale.exists()
    assert not (copy / "kfs").exists() and not (copy / "_cache/stages/probe").exists()
    # one listing per folder of the scope (the top, _cache/, _progress/, stgr_cot/), none of the prefix whole
    prefix = "ds/"
    assert sorted(_listings(proxy)) == sorted(f"{prefix}{p}" for p in ["", "_cache/", "_progress/", "stgr_cot/"])
    assert sum(1 for method, path, _ in proxy.requests if method == "GET" and "list-type" not in path) == 4


def test_fetch_brings_what_exists_notes_it_synced_and_misses_the_rest(s3, tmp_path):
    _put_all(s3)
    mirror = Mirror(s3.url("ds"), tmp_path / "copy" / "ds")
    wanted = ["_cache/stages/probe/aa/aa1.json", "kfs/aa/aa1.jpg", "_cache/stages/probe/zz/zz9.json"]
    assert mirror.fetch(wanted) == ["_cache/stages/probe/aa/aa1.json", "kfs/aa/aa1.jpg"]
    for rel in wanted[:2]:
        assert (mirror.local / rel).read_bytes() == OBJECTS[rel]
    assert not (mirror.local / wanted[2]).exists()
    index = json.loads(mirror.index_path.read_text())
    assert sorted(index) == sorted(wanted[:2])
    assert mirror.push(lambda rel: True) == []  # synced: nothing goes up again
    assert mirror.fetch(wanted[:2]) == []  # held already: no request
    assert not list(mirror.local.rglob("*.tmp"))


def test_a_scoped_delete_of_extras_leaves_what_the_copy_merely_lacks(s3, tmp_path):
    _put_all(s3)
    mirror = Mirror(s3.url("ds"), tmp_path / "copy" / "ds")
    mirror.pull(lambda rel: rel != "stgr_cot/part-00001.parquet", scope=["_progress/", "stgr_cot/"])
    assert mirror.delete_extras(scope=["_progress/", "stgr_cot/"]) == ["stgr_cot/part-00001.parquet"]
    left = {path.split("/ds/", 1)[1] for path in s3.fs.find(f"{s3.bucket}/ds")}
    assert left == set(OBJECTS) - {"stgr_cot/part-00001.parquet"}
