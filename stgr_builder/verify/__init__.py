"""verify: build the output rows and keep only those that break no consistency rule (SPEC section 1)."""

from stgr_builder.verify.rows import build_rows, format_question
from stgr_builder.verify.rules import Violation, check_row
from stgr_builder.verify.steps import TrackGateStep, VerifyStep, verify_work

__all__ = ["TrackGateStep", "VerifyStep", "Violation", "build_rows", "check_row", "format_question", "verify_work"]
