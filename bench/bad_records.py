"""Benchmark: a build of records that are all bad, at scale, against the same build of few.

    python bench/bad_records.py [--records 100000] [--baseline 1000] [--samples-per-shard 16]

Writes a generic JSONL source of ``--records`` bad records, a quarter of each kind (cut JSON
lines, records without the mapped fields, videos that do not exist, paths escaping the media
root: ``tests/bad_corpus.py``), and the same source with ``--baseline`` records. Each is built
with ``stgr build`` (the CLI, its Prefect flow and temporary server) into a fresh folder with
``samples_per_shard`` 16, the baseline first.

It prints, per build: wall seconds, CPU seconds (the build and the processes it waited for),
seconds per record, shard tasks (shard records written), files in the dataset folder
(``_cache`` aside) and rejects by code; then the ratios large / baseline, and what the extra
records cost in wall and CPU seconds (the build's fixed cost aside). Rejected records occupy
no shard slot, so files and shard tasks stay the same however many records are read (ratio
1.0), and the time per record falls (the build's fixed cost, the Prefect server and the
detector's load, is shared by more records). Before issue 21, 100,000 such records made 6,104
shard tasks and the temporary Prefect server died. Figures: docs/bounds.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stgr_builder.audit import query  # noqa: E402
from stgr_builder.testing.bad_records import write_bad_records_source  # noqa: E402


def build_once(folder: Path, n_records: int, samples_per_shard: int) -> dict:
    """Build ``n_records`` bad records with the CLI; what it took and wrote."""
    config = write_bad_records_source(folder / "src", n_records, seed=21, samples_per_shard=samples_per_shard)
    out = folder / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    started, cpu_before = time.perf_counter(), _children_cpu()
    result = subprocess.run(
        [sys.executable, "-m", "stgr_builder.cli", "build", str(config), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"build of {n_records} records failed: {result.stderr.strip()}")
    files = [p for p in out.rglob("*") if p.is_file() and "_cache" not in p.relative_to(out).parts]
    return {
        "records": n_records,
        "seconds": seconds,
        "cpu": cpu,
        "shard_tasks": len(list((out / "_progress").glob("shard-*.json"))),
        "files": len(files),
        "rejects": dict(query(out, "SELECT code, count(*) FROM rejects GROUP BY code ORDER BY code").rows),
    }


def _children_cpu() -> float:
    """CPU seconds (user and system) of the finished child processes: the build and the
    processes it waited for (its Prefect server). Less swayed by a busy machine than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--samples-per-shard", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stgr-bad-records-") as tmp:
        runs = [build_once(Path(tmp) / f"n{n}", n, args.samples_per_shard) for n in (args.baseline, args.records)]
    for run in runs:
        print(
            f"{run['records']:>7} bad records: {run['seconds']:6.1f} s, cpu {run['cpu']:6.1f} s "
            f"({1000 * run['seconds'] / run['records']:.3f} ms per record), {run['shard_tasks']} shard tasks, "
            f"{run['files']} files, rejects {run['rejects']}"
        )
    base, large = runs
    print(
        f"ratio {large['records']} / {base['records']} records: seconds {large['seconds'] / base['seconds']:.2f}, "
        f"cpu {large['cpu'] / base['cpu']:.2f}, "
        f"seconds per record {large['seconds'] / large['records'] / (base['seconds'] / base['records']):.3f}, "
        f"shard tasks {large['shard_tasks'] / base['shard_tasks']:.2f}, files {large['files'] / base['files']:.2f}"
    )
    # What the extra records cost, the build's fixed cost (Prefect's server, the detector) aside.
    extra = large["records"] - base["records"]
    print(
        f"the {extra} extra records: {large['seconds'] - base['seconds']:.1f} s, cpu {large['cpu'] - base['cpu']:.1f} s"
    )


if __name__ == "__main__":
    main()
