"""Every case of the suite's sampled chaos tests: the suite runs a seeded few of each (see
``tests/helpers/seeded.py``); this runs them all, e.g. before a release.

    python bench/all_cases.py [--seed 9] [-- extra pytest args]

Cases: SIGKILLs in all five stages (tests/test_resume.py), both signal orders and both signals in
every waiting state (tests/test_stopping.py), the track gate on seeds 11-13 with injected faults
(tests/test_evidence_gate.py). Exits with pytest's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLED = [
    "tests/test_resume.py::test_sigkills_in_every_stage_end_with_the_uninterrupted_rows",
    "tests/test_stopping.py",
    "tests/test_evidence_gate.py::test_the_gate_removes_corrupted_evidence_and_keeps_the_right",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=9, help="moments of the kills (STGR_CHAOS_SEED)")
    args, extra = parser.parse_known_args()
    env = {**os.environ, "STGR_ALL_CASES": "1", "STGR_CHAOS_SEED": str(args.seed)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SAMPLED, *extra]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
