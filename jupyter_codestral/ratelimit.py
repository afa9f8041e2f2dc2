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

    def is_full(self, now: float) -> bool:
        """Refilled to its burst: no different from a new bucket."""
        return self.tokens + (now - self.updated) * self.rate_per_minute / 60 >= self.burst


class UserRateLimiter:
    def __init__(self, rate_per_minute: float, burst: int) -> None:
        self.rate_per_minute = rate_per_minute
        self.burst = max(1, burst)
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = 1024

    @property
    def enabled(self) -> bool:
        return self.rate_per_minute > 0

    def check(self, user: str, now: float | None = None) -> float:
        """0 when ``user`` may send a request now, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._forget_full_buckets(now)
            bucket = self._buckets[user] = TokenBucket(self.rate_per_minute, self.burst, updated=now)
        return bucket.take(now)

    def _forget_full_buckets(self, now: float) -> None:
        # Users come and go (and token-authenticated API calls each get a new
        # anonymous user): keep only the buckets that still hold something back.
        self._buckets = {user: b for user, b in self._buckets.items() if not b.is_full(now)}
        self._prune_at = max(1024, 2 * len(self._buckets))
