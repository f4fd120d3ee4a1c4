"""The worker's backoff between retries of a call that met a passing failure.

Short on purpose: a QueueService restart or a one-second database blip should cost the worker
about a second, not tens of seconds, so retries start at 0.2 s and double up to 2 s. Jitter
(+-20%) keeps many workers that failed together from retrying in the same instant.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays of 0.2 s doubling to 2 s, each jittered by +-20%; `reset()` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 2.0) -> None:
        self._initial, self._maximum, self._next = initial, maximum, initial

    def next(self, at_least: float | None = None) -> float:
        """The next delay; at least `at_least` (a server's RetryInfo) when given."""
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self._maximum)
        return max(delay, at_least or 0.0)

    def reset(self) -> None:
        self._next = self._initial
