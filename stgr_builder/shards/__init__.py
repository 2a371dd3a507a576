"""The write stage: one fixed Arrow schema per dataset, atomic Parquet shards, completion
records for resume, and the manifest. The only module that writes the dataset."""

from stgr_builder.shards.arrow import DATASETS, arrow_type, rows_to_table, schema_for, table_to_rows
from stgr_builder.shards.writer import (
    MANIFEST,
    PROGRESS_DIR,
    assert_no_secrets,
    clean_temp_files,
    config_hash,
    finished_shard,
    load_manifest,
    merge_stats,
    prune_orphans,
    read_shard_result,
    read_table,
    record_path,
    sha256_file,
    shard_path,
    write_manifest,
    write_shard,
)

__all__ = [
    "DATASETS", "MANIFEST", "PROGRESS_DIR", "arrow_type", "assert_no_secrets", "clean_temp_files",
    "config_hash", "finished_shard", "load_manifest", "merge_stats", "prune_orphans",
    "read_shard_result", "read_table", "record_path", "rows_to_table", "schema_for",
    "sha256_file", "shard_path", "table_to_rows", "write_manifest", "write_shard",
]
