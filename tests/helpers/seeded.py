"""A seeded sample of the long variants: the suite runs a few cases of each chaos or scale test,
``bench/all_cases.py`` runs them all (``STGR_ALL_CASES=1``).

``STGR_CHAOS_SEED`` picks which cases (and, where a test draws moments, when): the default is
fixed, so a CI run is reproducible; set another seed to sample other cases locally.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T")

#: Which cases and moments the suite draws (the bench runs every case).
SEED = int(os.environ.get("STGR_CHAOS_SEED", "9"))
ALL_CASES = os.environ.get("STGR_ALL_CASES") == "1"


def sample(cases: Sequence[_T], k: int = 1, *, salt: str) -> list[_T]:
    """``k`` of ``cases`` (their order kept), or all of them under ``STGR_ALL_CASES=1``;
    ``salt`` (the test's name) keeps two tests with one seed from drawing alike."""
    if ALL_CASES or k >= len(cases):
        return list(cases)
    picked = set(random.Random(f"{SEED}:{salt}").sample(range(len(cases)), k))
    return [case for index, case in enumerate(cases) if index in picked]
