"""Where scheduled syncs fall in time: the scheduler's arithmetic, with no I/O.

Every scheduled account has two grids of slots, one per kind of sync: its next slot and a period
(the interval after quota stretching). Slots only ever move along their grid, so an account
keeps its place in the round across restarts and leader changes.

- A round laid out together (`place`) gives the k-th of N accounts the offset (k + 1/2) * P / N:
  even gaps of P / N, the first one half a gap away. When the full interval is a whole number of
  incremental intervals, each account's full slots fall on its incremental slots, spread evenly
  over the full interval, so a full sync replaces one incremental sync instead of following it.
- A served slot moves to the first grid point after the tick's horizon (`serve`): a slot that was
  missed is never served twice.
- A slot missed by more than the catch-up grace (the leader was down) moves to its first grid
  point from now on (`catch_up`): one sync per account for all the missed rounds, at the
  account's usual place in the next interval, so the catch-up is as evenly spread as a round.
- When the calls a round needs exceed the Google quota over the interval, every period is
  stretched by the same factor (`stretch_factor`) and future slots are rescaled (`rescale`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from queue_service.models import SyncType

# Scheduled syncs may use this share of the Google quota; the rest is left to syncs users ask for.
QUOTA_SAFETY = 0.8
# Stretch factors are rounded up to a multiple of this, so small changes in the estimates do not
# make the leader rescale every slot again.
STRETCH_STEP = 0.05
# Google calls a sync is assumed to make when no earlier sync of the account says otherwise.
DEFAULT_CALLS_ESTIMATE = 10


@dataclass(frozen=True, slots=True)
class Slots:
    """The next slot of each kind of sync of one account."""

    incremental: datetime
    full: datetime

    @property
    def due(self) -> datetime:
        return min(self.incremental, self.full)


@dataclass(frozen=True, slots=True)
class Service:
    """What serving an account's due slots comes to: one job, and the slots after it."""

    sync_type: SyncType
    scheduled_at: datetime
    following: Slots


@dataclass(frozen=True, slots=True)
class Demand:
    """One scheduled account's intervals (before stretching) and its expected Google calls."""

    incremental_interval: timedelta
    full_interval: timedelta
    incremental_calls: int | None = None
    full_calls: int | None = None


def period_seconds(interval: timedelta, stretch: float) -> int:
    """The period of a grid, in whole seconds: the interval stretched for the quota."""
    return max(1, round(interval.total_seconds() * stretch))


def place(
    position: int, count: int, start: datetime, incremental: timedelta, full: timedelta
) -> Slots:
    """The first slots of the `position`-th (0-based) of `count` accounts laid out at `start`."""
    if not 0 <= position < count:
        raise ValueError(f"position {position} is not within a round of {count}")
    ratio = full / incremental
    turns = round(ratio)
    if turns >= 1 and math.isclose(ratio, turns, rel_tol=1e-9):
        # Full slots should be evenly spread over the full interval (target p * turns / count
        # incremental intervals) yet sit on an incremental slot. Writing p * turns = a * count + b,
        # the account's incremental offset is b (+ r, which tells apart the accounts that share
        # b when turns and count have a common divisor g) and its full slot is a turns later:
        # incremental offsets stay a permutation of 0..count-1, full slots miss their even
        # target by less than g incremental gaps.
        common = math.gcd(turns, count)
        turn, rest = divmod(position * turns, count)
        shift = position * common // count
        first = start + incremental * ((rest + shift + 0.5) / count)
        return Slots(incremental=first, full=first + incremental * turn)
    fraction = (position + 0.5) / count
    return Slots(incremental=start + incremental * fraction, full=start + full * fraction)


def next_on_grid(slot: datetime, period: timedelta, after: datetime) -> datetime:
    """The first point of the grid through `slot` that is later than `after`."""
    if slot > after:
        return slot
    return slot + period * ((after - slot) // period + 1)


def catch_up(slot: datetime, period: timedelta, now: datetime) -> datetime:
    """The first point of the grid through `slot` that is not earlier than `now`."""
    if slot >= now:
        return slot
    steps = -((slot - now) // period)  # ceil((now - slot) / period)
    return slot + period * steps


def serve(current: Slots, incremental: timedelta, full: timedelta, horizon: datetime) -> Service:
    """Serves an account whose earliest slot is at or before `horizon`.

    A due full slot wins: a full sync reads everything an incremental one would. Incremental
    slots up to half an incremental interval after it are skipped, as the full sync has just
    read what they would.
    """
    if current.full <= horizon:
        skip_until = max(horizon, current.full + incremental / 2)
        return Service(
            sync_type=SyncType.FULL,
            scheduled_at=min(current.full, current.incremental),
            following=Slots(
                incremental=next_on_grid(current.incremental, incremental, skip_until),
                full=next_on_grid(current.full, full, horizon),
            ),
        )
    return Service(
        sync_type=SyncType.INCREMENTAL,
        scheduled_at=current.incremental,
        following=Slots(
            incremental=next_on_grid(current.incremental, incremental, horizon), full=current.full
        ),
    )


def rescale(slot: datetime, now: datetime, old_period: int, new_period: int) -> datetime:
    """A future slot moved so that its distance from now scales with its grid's new period.

    Applied to every account of a grid, this keeps their order and turns even gaps of
    old/N into even gaps of new/N. A slot already due stays where it is.
    """
    if slot <= now or old_period == new_period:
        return slot
    return now + (slot - now) * (new_period / old_period)


def calls_per_minute(
    demands: Iterable[Demand], default_estimate: int = DEFAULT_CALLS_ESTIMATE
) -> float:
    """Google calls per minute that scheduled syncs need, at their unstretched intervals.

    Counted as if every incremental slot ran, although full syncs replace some: an estimate on
    the safe side.
    """
    total = 0.0
    for demand in demands:
        incremental_calls = demand.incremental_calls or default_estimate
        full_calls = demand.full_calls or default_estimate
        total += incremental_calls / (demand.incremental_interval.total_seconds() / 60)
        total += full_calls / (demand.full_interval.total_seconds() / 60)
    return total


def stretch_factor(calls_per_minute: float, quota_per_minute: float) -> float:
    """How much longer every interval must be for scheduled syncs to fit the quota (1 = fits).

    Scheduled syncs may use QUOTA_SAFETY of the quota; the factor is rounded up to STRETCH_STEP.
    """
    needed = calls_per_minute / (quota_per_minute * QUOTA_SAFETY)
    if needed <= 1.0:
        return 1.0
    return round(math.ceil(needed / STRETCH_STEP - 1e-9) * STRETCH_STEP, 6)
