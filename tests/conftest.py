"""Test environment: never wait on a network, never touch the user's Prefect or YOLO state."""

import os
import tempfile
from pathlib import Path

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
