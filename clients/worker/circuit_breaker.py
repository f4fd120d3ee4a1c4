"""A circuit breaker around SyncService: stop taking jobs while it is down.

Closed: jobs are picked as usual. After `threshold` consecutive infrastructure failures
(SyncService unreachable, a call that timed out) it opens: the worker picks nothing for
`cooldown`, so jobs stay pending in the queue and spend no attempts. Then it is half-open: one
probe job is picked; its success closes the breaker, its failure opens it for another cooldown.
Any answer of SyncService's own, even an error about the account, shows it is up and counts
as a success here.

`force_open(seconds, reason)` holds dispatch for a while whatever SyncService's health: for an
answer that says every job would fail the same way until then (Google's API disabled for the
whole Cloud project). A success does not end a hold early; when it ends, one probe is picked
as after a cool-down.
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
        # How long the current opening lasts: `cooldown`, or a forced hold's own length.
        self._open_for = cooldown
        self._forced = False
        self._probe_out = False
        self._last_state = BreakerState.CLOSED
        #: How many times the breaker has opened (for logs and the run's metadata).
        self.times_opened = 0
        #: Why dispatch is held (force_open), while it is; None otherwise.
        self.hold_reason: str | None = None

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._open_for:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def seconds_until_probe(self) -> float:
        """How long until a probe may be picked; 0 unless the breaker is open."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - self._clock())

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

    @property
    def held(self) -> bool:
        """True while a forced hold (force_open) keeps the breaker open."""
        return self._forced and self.state is BreakerState.OPEN

    def record_success(self, permit: Permit) -> None:
        """SyncService answered (whatever the answer): close the breaker, unless dispatch is
        held (force_open), which only time ends."""
        if permit.probe:
            self._probe_out = False
        self._failures = 0
        if not self.held:
            self._opened_at = None
            self._forced = False
            self.hold_reason = None
        self._observe()

    def record_failure(self, permit: Permit) -> None:
        """SyncService was unreachable or too slow."""
        if permit.probe:
            self._probe_out = False
        self._failures += 1
        if permit.probe or (self._opened_at is None and self._failures >= self.threshold):
            # A failed probe, or the threshold reached: (re)open for a full cooldown.
            self._opened_at = self._clock()
            self._open_for = self.cooldown
            self._forced = False
            self.hold_reason = None
            self.times_opened += 1
        self._observe()

    def force_open(self, seconds: float, reason: str, permit: Permit | None = None) -> bool:
        """Holds dispatch for `seconds` (at least; a longer opening already in force stays).

        `permit` is the job's whose answer asked for the hold (a probe's is returned). Returns
        True when this starts a hold (none was in force), so the caller says why once.
        """
        if permit is not None and permit.probe:
            self._probe_out = False
        now = self._clock()
        was_open = self.state is BreakerState.OPEN
        was_held = self.held
        current_end = self._opened_at + self._open_for if self._opened_at is not None else now
        if not was_open or now + seconds > current_end:
            self._opened_at = now
            self._open_for = max(seconds, 0.0)
        if not was_open:
            self.times_opened += 1
        self._forced = True
        self.hold_reason = reason
        self._observe()
        return not was_held

    def _observe(self) -> BreakerState:
        state = self.state
        if state is not self._last_state:
            previous, self._last_state = self._last_state, state
            if self._forced and state is BreakerState.OPEN:
                log.warning(
                    "circuit breaker %s -> %s: dispatch held for %.0f s (%s)",
                    previous,
                    state,
                    self.seconds_until_probe(),
                    self.hold_reason,
                )
            else:
                log.warning(
                    "circuit breaker %s -> %s (%d consecutive SyncService failures)",
                    previous,
                    state,
                    self._failures,
                )
            if self._on_change is not None:
                self._on_change(previous, state)
        return state
