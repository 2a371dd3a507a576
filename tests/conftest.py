"""Test environment: never wait on a network, never touch the user's Prefect or YOLO state."""

import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="stgr-tests-"))
os.environ.update(
    {
        "YOLO_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PREFECT_HOME": str(_STATE / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A busy machine (the suite, other builds) can take over the default 20 s to start Prefect's
        # temporary server the first time (it creates its database); the CLI allows 120 s too.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "YOLO_CONFIG_DIR": str(_STATE / "ultralytics"),
        # the open-vocabulary detectors' text-embedding cache (detect/openvocab.py)
        "STGR_CACHE_DIR": str(_STATE / "stgr-cache"),
    }
)

# One Prefect server for the session (``helpers/prefect_server.py``): every build a test starts,
# and every Dask or Ray worker, reports to it instead of starting a temporary server of its own.
# Set before this process imports Prefect, whose settings are read once at import.
from helpers.prefect_server import start_session_server  # noqa: E402

os.environ["PREFECT_API_URL"] = start_session_server()

# Fixtures several test modules share (the LLM annotator's frames and endpoint): ``root``, ``env``.
pytest_plugins = ["helpers.llm_units", "helpers.s3"]


def xdist_scope(nodeid: str) -> str:
    """The worker unit of a test under ``pytest -n 2`` (``make test``): its file, so a file's
    module fixtures (a reference build, an S3 server) are made once; and one unit for every test
    that starts Ray, so two local Ray clusters never start at once on a small machine."""
    file, _, name = nodeid.partition("::")
    starts_ray = file.endswith("/test_ray.py") or "ray" in re.split(r"[_\[\]-]", name)
    return "ray" if starts_ray else file


#: The longest units (``pytest -n 2 --durations=0``, summed per unit), started first so that
#: no long one is left running alone at the end; the rest follow, those with most tests first.
LONGEST_UNITS = (
    "tests/test_object_store.py",
    "ray",
    "tests/test_bad_inputs.py",
    "tests/test_stopping.py",
    "tests/test_exactly_once.py",
    "tests/test_inherited_labels.py",
    "tests/test_budget_store.py",
)
_RANK = {unit: index for index, unit in enumerate(LONGEST_UNITS)}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's scope scheduler over ``xdist_scope``, longest units first (its own
    ``loadgroup`` marks are lost on pytest 9, whose node ids it can no longer rewrite)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFileRayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            ordered = sorted(self.workqueue.items(), key=lambda unit: _RANK.get(unit[0], len(_RANK)))
            self.workqueue = OrderedDict(ordered)  # stable: the rest keep xdist's order
            super()._assign_work_unit(node)

    return ByFileRayTogether(config, log)
