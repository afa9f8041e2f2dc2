"""Per-user request limits for shared deployments (one server, many students)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` requests per minute on average, bursts of up to ``burst``."""

    rate_per_minute: float
    burst: int
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float | None = None) -> float:
        """Take one request; return 0 if allowed, else the seconds until one is."""
        now = time.monotonic() if now is None else now
        per_second = self.rate_per_minute / 60
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / per_second


class UserRateLimiter:
    def __init__(self, rate_per_minute: float, burst: int) -> None:
        self.rate_per_minute = rate_per_minute
        self.burst = max(1, burst)
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate_per_minute > 0

    def check(self, user: str, now: float | None = None) -> float:
        """0 when ``user`` may send a request now, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = TokenBucket(self.rate_per_minute, self.burst)
        return bucket.take(now)
