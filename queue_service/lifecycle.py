"""Rules of a job's lifecycle that are pure arithmetic: backoff, and what a failure leads to."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

# A retry is never scheduled further out than this, whatever the attempt count.
MAX_RETRY_DELAY = timedelta(hours=24)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `base * 2^(attempt-1)`, jittered by at most +-`jitter`.

    Jitter spreads retries of jobs that failed together (a Google outage) so they do not all
    come back in the same second. A server-given `retry_after` (a rate limit) wins when longer.
    """

    base: timedelta = timedelta(minutes=1)
    jitter: float = 0.1
    random: Callable[[], float] = random.random

    def jitter_factor(self) -> float:
        """A random factor in [1 - jitter, 1 + jitter] that one delay is multiplied by."""
        return 1.0 + self.jitter * (2.0 * self.random() - 1.0)

    def delay(self, attempt: int, retry_after: timedelta | None = None) -> timedelta:
        """The wait before retrying after failed attempt number `attempt`.

        PostgreSQL's driver computes the same in SQL for many failures at once (from each
        job's attempts, with a `jitter_factor` per failure); a change here is a change there.
        """
        exponent = max(attempt, 1) - 1
        backoff = min(self.base * (2**exponent), MAX_RETRY_DELAY)
        delay = backoff * self.jitter_factor()
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, MAX_RETRY_DELAY)
        return delay


@dataclass(frozen=True, slots=True)
class FailureDecision:
    """What a failed attempt leads to: a retry at `retry_at`, or a failed job."""

    retry: bool
    retry_at: datetime | None


def decide_failure(
    *,
    attempts: int,
    max_attempts: int,
    permanent: bool,
    now: datetime,
    policy: RetryPolicy,
    retry_after: timedelta | None = None,
) -> FailureDecision:
    """Permanent errors and exhausted attempts fail the job; anything else is retried later.

    PostgreSQL's driver applies the same rule in SQL to many failures at once.
    """
    if permanent or attempts >= max_attempts:
        return FailureDecision(retry=False, retry_at=None)
    return FailureDecision(retry=True, retry_at=now + policy.delay(attempts, retry_after))
