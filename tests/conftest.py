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
        "YOLO_CONFIG_DIR": str(_STATE / "ultralytics"),
        # The temporary Prefect server gets 20 s to start by default: on a loaded 2-core machine it
        # has taken longer, and a flow test then fails on the server, not on the code under test.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
)
