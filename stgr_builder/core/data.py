"""The package's data folders (prompts, JSON Schemas, recipes, demo weights), found with
importlib.resources: the same call finds them in an installed wheel, an editable install and a
source checkout on PYTHONPATH (stgr_builder/__init__.py maps the checkout's top folders).

>>> (data_folder("stgr_builder.prompts") / "template-cot.yaml").is_file()
True
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from stgr_builder.errors import StgrError


def data_folder(package: str) -> Path:
    """The folder on disk holding a package's data files.

    A folder, not a ``Traversable``: the detector and the prompt loader hand paths to libraries
    that open files by name. pip always installs packages as folders; an install without one (a
    zip) is refused with the reason.
    """
    found = resources.files(package)
    if not isinstance(found, Path) or not found.is_dir():
        raise StgrError(f"{package}'s data files are not in a folder on disk ({found}); install stgr-builder with pip")
    return found
