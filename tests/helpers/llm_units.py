"""What the LLM annotator's unit tests share: four grey key frames on disk, the candidate boxes
of a dog and a cat on them, and the fixtures that make the frames and point the openai client at
a server (``env(server)``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

#: (frame index, time in seconds) of the key frames.
FRAMES = [(0, 0.0), (10, 1.0), (20, 2.0), (30, 3.0)]
BOXES = {"dog": [0.1, 0.2, 0.35, 0.6], "cat": [0.55, 0.3, 0.8, 0.7]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for idx, _ in FRAMES:
        path = tmp_path / "kfs" / f"f{idx}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((120, 160, 3), 40 + idx, dtype=np.uint8)).save(path)
    return tmp_path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], None]:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    return lambda server: monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
