"""stgr-builder: spatio-temporally grounded chain-of-thought datasets for video reasoning."""

from pathlib import Path

#: The one version source: pyproject.toml reads it (``[tool.setuptools.dynamic]``); changes are
#: listed in CHANGELOG.md. Stage results do not depend on it (``core/codehash.py`` does that).
__version__ = "0.1.0"


def _checkout_top() -> Path | None:
    """The repository's top folder when this package is imported from a source checkout
    (PYTHONPATH or an editable install), else None (an installed wheel)."""
    top = Path(__file__).resolve().parent.parent
    here = Path(__file__).resolve().parent
    if (top / "pyproject.toml").is_file() and (top / "flows" / "build.py").is_file() and not (here / "flows").exists():
        return top
    return None


# A wheel installs the repository's flows/, prompts/ and schemas/ folders as subpackages of this
# one (pyproject.toml's package-dir). In a checkout they stay at the top: searching the top folder
# for this package's submodules finds them there under the same names (stgr_builder.flows, ...).
if (_top := _checkout_top()) is not None:
    __path__.append(str(_top))
