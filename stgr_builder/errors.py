"""Errors. A bad *sample* never raises out of a step: steps turn ``SampleError`` into a
``Reject``. ``StgrError`` is for the user's mistakes (bad config, missing dependency) and
ends the command with a one-line reason."""

from __future__ import annotations

import warnings

from stgr_builder.models import RejectCode


class StgrError(Exception):
    """A problem the user must fix; the CLI prints it as one line and exits non-zero."""


class StgrWarning(UserWarning):
    """Something the user should know that does not stop the command (a stored file that could
    not be used and is rebuilt, an optional provider call refused); the CLI prints it as one
    line ``warning: ...``."""


def warn(message: str) -> None:
    """Issue ``message`` as a ``StgrWarning`` (library code never prints)."""
    warnings.warn(message, StgrWarning, stacklevel=2)


class SampleError(Exception):
    """One sample cannot go on; the step that catches it turns it into a Reject."""

    def __init__(self, code: RejectCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def require(module: str, extra: str | None = None):
    """Import a dependency, or fail with the pip command that installs it: the extra of
    pyproject.toml that holds it, or none for a core dependency (tests/test_wheel.py checks that
    every extra named here exists).

    >>> require("transformers", extra="groundingdino")  # doctest: +SKIP
    <module 'transformers' ...>
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        target = f"'stgr-builder[{extra}]'" if extra else "stgr-builder"
        raise StgrError(f"{module} is not installed: pip install {target} ({exc})") from exc
