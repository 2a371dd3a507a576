"""What the dry-run server meters: its per-minute limits and the counts ``/stats`` answers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class RateLimits:
    """The server's per-minute limits: a bucket per kind holding one second's worth."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.lock = threading.Lock()
        self.kinds = {
            kind: [per_minute, max(1.0, per_minute / 60), time.monotonic()]
            for kind, per_minute in (("requests", rpm), ("tokens", tpm))
            if per_minute
        }

    def _refill(self, kind: str, now: float) -> tuple[float, float]:
        per_minute, level, at = self.kinds[kind]
        rate = per_minute / 60
        level = min(max(1.0, rate), level + (now - at) * rate)
        self.kinds[kind][1:] = [level, now]
        return level, rate

    def take(self, tokens: int) -> tuple[float | None, dict[str, str]]:
        """Admit a request of ``tokens`` (None) or refuse it (seconds until it would pass), and
        the rate-limit headers either way."""
        with self.lock:
            now = time.monotonic()
            wait = 0.0
            for kind, need in (("requests", 1.0), ("tokens", 1e-9)):
                if kind in self.kinds:
                    level, rate = self._refill(kind, now)
                    if level < need:
                        wait = max(wait, (need - level) / rate)
            if not wait:
                for kind, cost in (("requests", 1.0), ("tokens", float(tokens))):
                    if kind in self.kinds:
                        self.kinds[kind][1] -= cost
            headers = {}
            for kind, (per_minute, level, _) in self.kinds.items():
                rate, cap = per_minute / 60, max(1.0, per_minute / 60)
                headers[f"x-ratelimit-limit-{kind}"] = f"{per_minute:g}"
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(level)))
                headers[f"x-ratelimit-reset-{kind}"] = f"{max(0.0, cap - level) / rate:.3f}s"
            return (wait or None), headers


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int = 0
    by_outcome: Counter = field(default_factory=Counter)
    by_schema: Counter = field(default_factory=Counter)
    by_key: Counter = field(default_factory=Counter)
    ok_keys: set = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0  # TCP connections accepted (a client that keeps its connections opens few)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": self.total,
                "by_outcome": dict(self.by_outcome),
                "by_schema": dict(self.by_schema),
                "by_key": dict(self.by_key),
                "ok_keys": sorted(self.ok_keys),
                "max_in_flight": self.max_in_flight,
                "connections": self.connections,
            }
