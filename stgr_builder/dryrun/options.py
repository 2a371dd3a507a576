"""What a dry-run server is told: its faults, limits, latency and policy (``ServerOptions``), and
the names it answers with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stgr_builder.dryrun.noisy import NoisyOptions

FAULT_KINDS = ("429", "500", "timeout", "malformed", "schema", "truncated", "dropped", "html", "huge", "hang")
#: Size of a ``huge`` fault's body.
HUGE_BYTES = 5 << 20
MODEL_ID = "stgr-dry-run"
KEY_HEADER = "X-Stgr-Request-Key"


@dataclass
class ServerOptions:
    latency_ms: float = 0.0  # from a request's arrival (its headers read) to its reply
    fault_rate: float = 0.0
    faults: Sequence[str] = FAULT_KINDS
    seed: int = 0
    retry_after_s: float = 0.1
    hang_s: float = 5.0
    crop_deny: Sequence[str] = ()
    rpm: float | None = None
    tpm: float | None = None
    batch_delay_s: float = 0.2
    policy: str = "oracle"  # or "noisy": mistakes as ``noisy``'s options say
    noisy: NoisyOptions = field(default_factory=NoisyOptions)
    list_batches: bool = True  # False: GET /v1/batches answers 404, as some providers' compatible APIs do
