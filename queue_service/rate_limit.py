"""The per-user enqueue rate limit: a token bucket per user, in this process.

A user (role `authenticated`) may enqueue ENQUEUE_BURST_PER_USER syncs at once and then
ENQUEUE_RATE_PER_USER a second; a batch costs one token per item. Admins and workers
(`admin`, `service_role`) are not limited: they are the operators and the scheduler, whose
volume is planned. Buckets live in each QueueService process, so with N replicas behind a
balancer a user gets up to N times the rate: a bound on a runaway script, not an exact quota.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

# Buckets kept at most; past this, the full ones (users idle long enough to refill) are dropped.
MAX_TRACKED_USERS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class UserRateLimiter:
    """Token buckets by user id. `rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[uuid.UUID, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, user: uuid.UUID, cost: int = 1) -> float:
        """Takes `cost` tokens and returns 0, or takes none and returns the seconds until
        `cost` tokens will be there. `cost` must not exceed `burst`."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_USERS:
                self._forget_full(now)
            bucket = self._buckets[user] = _Bucket(tokens=float(self.burst), updated=now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [
            user
            for user, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for user in full:
            del self._buckets[user]
