"""The circuit breaker: opens after N infrastructure failures, probes once after a cool-down."""

from __future__ import annotations

from clients.worker.circuit_breaker import BreakerState, CircuitBreaker, Permit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, cooldown: float = 30.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(threshold, cooldown, clock=clock), clock


def test_closed_breaker_grants_every_permit() -> None:
    breaker, _ = make()
    assert breaker.state is BreakerState.CLOSED
    assert len(breaker.acquire(4)) == 4


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make(threshold=3)
    for _ in range(2):
        breaker.record_failure(Permit())
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(Permit())
    assert breaker.state is BreakerState.OPEN
    assert breaker.acquire(4) == []
    assert breaker.times_opened == 1


def test_a_success_resets_the_count() -> None:
    breaker, _ = make(threshold=3)
    breaker.record_failure(Permit())
    breaker.record_failure(Permit())
    breaker.record_success(Permit())
    breaker.record_failure(Permit())
    breaker.record_failure(Permit())
    assert breaker.state is BreakerState.CLOSED


def test_after_cooldown_exactly_one_probe_is_allowed() -> None:
    breaker, clock = make(threshold=1, cooldown=30)
    breaker.record_failure(Permit())
    assert breaker.seconds_until_probe() == 30
    clock.now += 29.9
    assert breaker.acquire(3) == []
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    permits = breaker.acquire(3)
    assert permits == [Permit(probe=True)]
    assert breaker.acquire(3) == []  # the probe is out


def test_successful_probe_closes_the_breaker() -> None:
    breaker, clock = make(threshold=1, cooldown=5)
    breaker.record_failure(Permit())
    clock.now += 5
    (probe,) = breaker.acquire(1)
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED
    assert len(breaker.acquire(2)) == 2


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    breaker, clock = make(threshold=2, cooldown=5)
    breaker.record_failure(Permit())
    breaker.record_failure(Permit())
    clock.now += 5
    (probe,) = breaker.acquire(1)
    clock.now += 1
    breaker.record_failure(probe)
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe() == 5
    assert breaker.times_opened == 2


def test_an_unused_probe_can_be_given_back() -> None:
    breaker, clock = make(threshold=1, cooldown=1)
    breaker.record_failure(Permit())
    clock.now += 1
    (probe,) = breaker.acquire(1)
    breaker.give_back(probe)  # the pick returned no job
    assert breaker.acquire(1) == [Permit(probe=True)]


def test_jobs_picked_before_it_opened_may_not_run_while_open() -> None:
    breaker, _ = make(threshold=1)
    early = breaker.acquire(2)
    breaker.record_failure(early[0])
    assert not breaker.allows(early[1])
    assert breaker.allows(Permit(probe=True))


def test_state_changes_are_reported() -> None:
    changes: list[tuple[BreakerState, BreakerState]] = []
    clock = FakeClock()
    breaker = CircuitBreaker(1, 2, clock=clock, on_change=lambda a, b: changes.append((a, b)))
    breaker.record_failure(Permit())
    clock.now += 2
    (probe,) = breaker.acquire(1)
    breaker.record_success(probe)
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_force_open_holds_dispatch_for_its_own_length_then_allows_one_probe() -> None:
    breaker, clock = make(threshold=3, cooldown=30)
    assert breaker.force_open(300, "Google API disabled") is True
    assert breaker.state is BreakerState.OPEN
    assert breaker.held and breaker.hold_reason == "Google API disabled"
    assert breaker.seconds_until_probe() == 300
    assert breaker.times_opened == 1
    clock.now += 299
    assert breaker.acquire(4) == []
    clock.now += 1
    assert breaker.acquire(4) == [Permit(probe=True)]
    assert not breaker.held


def test_a_success_does_not_end_a_hold_early() -> None:
    breaker, clock = make(threshold=3, cooldown=30)
    breaker.force_open(120, "Google API disabled")
    # Another in-flight job got an ordinary answer: SyncService is up, yet the hold stands.
    breaker.record_success(Permit())
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe() == 120
    clock.now += 120
    (probe,) = breaker.acquire(1)
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.hold_reason is None


def test_force_open_reports_only_the_start_of_a_hold_and_extends_it() -> None:
    breaker, clock = make(threshold=3, cooldown=30)
    assert breaker.force_open(60, "disabled") is True
    clock.now += 10
    # A second job with the same answer: still one hold, now ending later.
    assert breaker.force_open(60, "disabled") is False
    assert breaker.seconds_until_probe() == 60
    # A shorter request never shortens it.
    assert breaker.force_open(5, "disabled") is False
    assert breaker.seconds_until_probe() == 60
    assert breaker.times_opened == 1


def test_force_open_lengthens_a_breaker_opened_by_failures() -> None:
    breaker, _ = make(threshold=1, cooldown=30)
    breaker.record_failure(Permit())
    assert breaker.force_open(300, "disabled") is True  # open already, but not held
    assert breaker.seconds_until_probe() == 300
    assert breaker.times_opened == 1


def test_a_held_probe_gives_its_permit_back_and_a_failed_probe_after_a_hold_reopens() -> None:
    breaker, clock = make(threshold=3, cooldown=30)
    breaker.force_open(10, "disabled")
    clock.now += 10
    (probe,) = breaker.acquire(1)
    # The probe met the same answer: held again, and the probe is no longer out.
    breaker.force_open(10, "disabled", permit=probe)
    clock.now += 10
    (probe,) = breaker.acquire(1)
    breaker.record_failure(probe)  # SyncService itself is down now: a normal cool-down
    assert breaker.state is BreakerState.OPEN
    assert not breaker.held
    assert breaker.seconds_until_probe() == 30
    assert breaker.times_opened == 3
