"""The write stage: atomic Parquet shards, completion records for resume, and the manifest.
The only package that writes the dataset's shards (the schemas and paths are in ``core``)."""

from stgr_builder.shards.writer import (
    assert_no_secrets,
    clean_temp_files,
    finished_shard,
    merge_stats,
    prune_orphans,
    read_shard_result,
    read_table,
    write_manifest,
    write_plan_json,
    write_plan_record,
    write_shard,
)

__all__ = [
    "assert_no_secrets",
    "clean_temp_files",
    "finished_shard",
    "merge_stats",
    "prune_orphans",
    "read_shard_result",
    "read_table",
    "write_manifest",
    "write_plan_json",
    "write_plan_record",
    "write_shard",
]
