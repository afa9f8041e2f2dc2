"""Recent latencies, counts and the last error, for ``codestral/status``."""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CompletionError


def median(values: Sequence[float]) -> float:
    """The median (the mean of the two middle values of an even count): the one way every figure here is
    summarised."""
    return statistics.median(values)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of already sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class ServiceStats:
    window: int = 200
    total_ms: deque[float] = field(default_factory=deque)
    first_token_ms: deque[float] = field(default_factory=deque)
    served: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0  # by the course policy or the notebook's own settings
    redacted: int = 0  # secrets replaced in prompts
    last_error: dict[str, Any] | None = None

    def record(self, timings: dict[str, Any]) -> None:
        self.served += 1
        self.redacted += timings.get("redactions", 0)
        for name in ("total_ms", "first_token_ms"):
            values: deque[float] = getattr(self, name)
            values.append(timings[name])
            while len(values) > self.window:
                values.popleft()

    def record_error(self, error: CompletionError) -> None:
        self.failed += 1
        self.last_error = {**error.to_json()["error"], "at": time.time()}

    @staticmethod
    def _summary(values: deque[float]) -> dict[str, float | None]:
        if not values:
            return {"median": None, "p95": None, "last": None}
        ordered = sorted(values)
        return {
            "median": round(median(ordered), 1),
            "p95": round(percentile(ordered, 0.95), 1),
            "last": values[-1],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "refused": self.refused,
            "total_ms": self._summary(self.total_ms),
            "first_token_ms": self._summary(self.first_token_ms),
        }
