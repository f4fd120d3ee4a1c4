"""The scheduler's arithmetic (`queue_service.slots`): where slots fall, with no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from queue_service.models import SyncType
from queue_service.slots import (
    DEFAULT_CALLS_ESTIMATE,
    Demand,
    Slots,
    calls_per_minute,
    catch_up,
    next_on_grid,
    place,
    rescale,
    serve,
    stretch_factor,
)
from tests.queue.scheduling import gaps

START = datetime(2030, 1, 7, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


@pytest.mark.parametrize("count", [1, 2, 7, 24, 100, 1000])
def test_a_round_of_incremental_slots_has_even_gaps_within_the_interval(count):
    slots = [place(p, count, START, HOUR, DAY) for p in range(count)]
    times = [s.incremental for s in slots]

    assert min(times) == START + HOUR / (2 * count)
    assert max(times) < START + HOUR
    assert len(set(times)) == count
    if count > 1:
        spread = gaps(times)
        assert max(spread) - min(spread) < 1e-5
        assert min(spread) == pytest.approx(HOUR.total_seconds() / count)


@pytest.mark.parametrize("count", [1, 7, 20, 100, 1000])
def test_full_slots_sit_on_incremental_slots_and_are_spread_over_the_full_interval(count):
    slots = [place(p, count, START, HOUR, DAY) for p in range(count)]
    fulls = [s.full for s in slots]

    for s in slots:
        assert (s.full - s.incremental) % HOUR == timedelta(0)
    assert min(fulls) >= START
    assert max(fulls) < START + DAY
    assert len(set(fulls)) == count
    if count > 1:
        # Even up to the shift that keeps incremental offsets apart: gcd(24, count) gaps.
        ideal = DAY.total_seconds() / count
        spread = gaps(fulls)
        assert min(spread) >= ideal * 0.95
        assert max(spread) <= ideal + 24 * HOUR.total_seconds() / count


def test_a_full_interval_that_is_no_multiple_of_the_incremental_one_is_spread_on_its_own():
    slots = [place(p, 4, START, HOUR, timedelta(minutes=90)) for p in range(4)]

    assert [s.full - START for s in slots] == [
        timedelta(minutes=m) for m in (11.25, 33.75, 56.25, 78.75)
    ]
    assert [s.incremental - START for s in slots] == [
        timedelta(minutes=m) for m in (7.5, 22.5, 37.5, 52.5)
    ]


def test_a_position_outside_the_round_is_refused():
    with pytest.raises(ValueError, match="position 3"):
        place(3, 3, START, HOUR, DAY)


def test_the_next_grid_point_skips_every_missed_slot_but_keeps_the_phase():
    slot = START + timedelta(minutes=10)

    assert next_on_grid(slot, HOUR, START) == slot
    assert next_on_grid(slot, HOUR, slot) == slot + HOUR
    assert next_on_grid(slot, HOUR, slot + 5 * HOUR + timedelta(seconds=1)) == slot + 6 * HOUR


def test_catching_up_moves_a_missed_slot_to_its_first_grid_point_from_now():
    slot = START + timedelta(minutes=10)

    assert catch_up(slot, HOUR, START) == slot
    assert catch_up(slot, HOUR, slot) == slot
    assert catch_up(slot, HOUR, slot + 3 * HOUR + timedelta(minutes=1)) == slot + 4 * HOUR
    assert catch_up(slot, HOUR, slot + 3 * HOUR) == slot + 3 * HOUR


def test_a_due_incremental_slot_is_served_and_moves_one_interval_on():
    current = Slots(incremental=START, full=START + 5 * HOUR)

    service = serve(current, HOUR, DAY, horizon=START + timedelta(seconds=30))

    assert service.sync_type is SyncType.INCREMENTAL
    assert service.scheduled_at == START
    assert service.following == Slots(incremental=START + HOUR, full=START + 5 * HOUR)


def test_a_full_slot_due_with_an_incremental_one_wins_and_both_move_on():
    current = Slots(incremental=START, full=START)

    service = serve(current, HOUR, DAY, horizon=START + timedelta(seconds=30))

    assert service.sync_type is SyncType.FULL
    assert service.scheduled_at == START
    assert service.following == Slots(incremental=START + HOUR, full=START + DAY)


def test_an_incremental_slot_shortly_after_a_full_one_is_skipped():
    current = Slots(incremental=START + timedelta(minutes=20), full=START)

    service = serve(current, HOUR, DAY, horizon=START + timedelta(seconds=30))

    assert service.sync_type is SyncType.FULL
    assert service.following.incremental == START + timedelta(minutes=80)


def test_an_incremental_slot_more_than_half_an_interval_after_a_full_one_stays():
    current = Slots(incremental=START + timedelta(minutes=40), full=START)

    service = serve(current, HOUR, DAY, horizon=START + timedelta(seconds=30))

    assert service.following.incremental == START + timedelta(minutes=40)


def test_rescaling_scales_the_distance_of_future_slots_from_now():
    now = START

    assert rescale(now + timedelta(minutes=30), now, 3600, 7200) == now + HOUR
    assert rescale(now - timedelta(minutes=1), now, 3600, 7200) == now - timedelta(minutes=1)
    assert rescale(now + timedelta(minutes=30), now, 3600, 3600) == now + timedelta(minutes=30)


def test_calls_per_minute_use_each_accounts_last_counts_and_a_default_when_unknown():
    known = Demand(HOUR, DAY, incremental_calls=60, full_calls=1440)
    unknown = Demand(HOUR, DAY)

    assert calls_per_minute([known]) == pytest.approx(1 + 1)
    assert calls_per_minute([unknown]) == pytest.approx(
        DEFAULT_CALLS_ESTIMATE / 60 + DEFAULT_CALLS_ESTIMATE / 1440
    )


def test_the_stretch_is_one_while_the_calls_fit_and_grows_in_steps_beyond():
    assert stretch_factor(240, 300) == 1.0  # exactly 80% of the quota
    assert stretch_factor(241, 300) == 1.05
    assert stretch_factor(480, 300) == 2.0
    assert stretch_factor(481, 300) == 2.05
