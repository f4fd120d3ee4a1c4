"""A circuit breaker around SyncService: stop taking jobs while it is down.

Closed: jobs are picked as usual. After `threshold` consecutive infrastructure failures
(SyncService unreachable, a call that timed out) it opens: the worker picks nothing for
`cooldown`, so jobs stay pending in the queue and spend no attempts. Then it is half-open: one
probe job is picked; its success closes the breaker, its failure opens it for another cooldown.
Any answer of SyncService's own, even an error about the account, shows it is up and counts
as a success here.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to run one picked job. The probe permit is the one job tried while half-open."""

    probe: bool = False


class CircuitBreaker:
    """Counts consecutive infrastructure failures and decides how many jobs may be picked.

    Not thread-safe: it lives on the worker's event loop.
    """

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_out = False
        self._last_state = BreakerState.CLOSED
        #: How many times the breaker has opened (for logs and the run's metadata).
        self.times_opened = 0

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def seconds_until_probe(self) -> float:
        """How long until a probe may be picked; 0 unless the breaker is open."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def acquire(self, wanted: int) -> list[Permit]:
        """Permits for up to `wanted` jobs: all when closed, one probe when half-open."""
        state = self._observe()
        if state is BreakerState.CLOSED:
            return [Permit() for _ in range(wanted)]
        if state is BreakerState.HALF_OPEN and not self._probe_out and wanted > 0:
            self._probe_out = True
            return [Permit(probe=True)]
        return []

    def give_back(self, permit: Permit) -> None:
        """A permit that was not used (nothing picked, or the job was handed back unrun)."""
        if permit.probe:
            self._probe_out = False

    def allows(self, permit: Permit) -> bool:
        """Whether a picked job may still run: the breaker may have opened since the pick."""
        return permit.probe or self._observe() is BreakerState.CLOSED

    def record_success(self, permit: Permit) -> None:
        """SyncService answered (whatever the answer): close the breaker."""
        if permit.probe:
            self._probe_out = False
        self._failures = 0
        self._opened_at = None
        self._observe()

    def record_failure(self, permit: Permit) -> None:
        """SyncService was unreachable or too slow."""
        if permit.probe:
            self._probe_out = False
        self._failures += 1
        if permit.probe or (self._opened_at is None and self._failures >= self.threshold):
            # A failed probe, or the threshold reached: (re)open for a full cooldown.
            self._opened_at = self._clock()
            self.times_opened += 1
        self._observe()

    def _observe(self) -> BreakerState:
        state = self.state
        if state is not self._last_state:
            previous, self._last_state = self._last_state, state
            log.warning(
                "circuit breaker %s -> %s (%d consecutive SyncService failures)",
                previous,
                state,
                self._failures,
            )
            if self._on_change is not None:
                self._on_change(previous, state)
        return state
