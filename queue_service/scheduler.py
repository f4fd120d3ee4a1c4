"""Periodic syncs: the leader enqueues an incremental and a full sync of every active account.

Each tick (`SCHEDULER_TICK`) is one pass, in bounded batches of one transaction each:

1. the plan: the Google calls scheduled syncs need per minute, from each account's last
   succeeded sync, against the quota; every interval is stretched by the same factor when they
   do not fit (refreshed every few minutes);
2. rescale, when the stretch changed (or this replica has just become leader): future slots
   move so that their gaps follow the new periods;
3. place the accounts not laid out yet: a round spread evenly over its interval;
4. catch up: slots missed by more than the grace (the leader was down) move to their next grid
   point, one sync per account for all the missed rounds, spread like a round;
5. enqueue every account with a slot before the next tick, with `scheduled_at` at the slot.

The arithmetic is in `slots`, the SQL in `schedule_store`; this module only sequences them. A pass is
safe to run twice at once (store batches lock the rows they change), so a brief overlap of two
leaders during a failover duplicates nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from queue_service.models import ScheduleDefaults
from queue_service.settings import QueueSettings
from queue_service.slots import QUOTA_SAFETY, calls_per_minute, stretch_factor
from queue_service.store import JobStore

log = logging.getLogger(__name__)

# How often the leader re-reads how many calls the accounts' syncs make.
PLAN_REFRESH = timedelta(minutes=5)
# Rows per transaction, so many thousands of accounts never make one giant transaction.
BATCH_SIZE = 500
# A slot missed by less than this is served at once; by more, it waits for its next grid point.
MIN_CATCH_UP_GRACE = timedelta(minutes=2)
# Call counts are read from jobs finished this many of the longest default interval ago.
ESTIMATE_LOOKBACK_INTERVALS = 2
ESTIMATE_LOOKBACK_MAX = timedelta(days=31)


@dataclass(frozen=True)
class ScheduleConfig:
    """What the scheduler needs of the service's settings."""

    incremental_interval: timedelta = timedelta(hours=1)
    full_interval: timedelta = timedelta(hours=24)
    priority: int = 0
    tick: timedelta = timedelta(seconds=30)
    quota_per_minute: float = 300.0
    max_attempts: int = 3
    batch_size: int = BATCH_SIZE

    @classmethod
    def from_settings(cls, settings: QueueSettings) -> ScheduleConfig:
        return cls(
            incremental_interval=settings.schedule_incremental_interval,
            full_interval=settings.schedule_full_interval,
            priority=settings.schedule_priority,
            tick=settings.scheduler_tick,
            quota_per_minute=settings.gbp_quota_per_minute,
            max_attempts=settings.default_max_attempts,
        )

    @property
    def defaults(self) -> ScheduleDefaults:
        return ScheduleDefaults(
            incremental_interval=self.incremental_interval, full_interval=self.full_interval
        )

    @property
    def grace(self) -> timedelta:
        """How late a slot may be served; a later one counts as missed (see `slots.catch_up`)."""
        return max(3 * self.tick, MIN_CATCH_UP_GRACE)


@dataclass(frozen=True)
class Plan:
    """The load of scheduled syncs against the quota, and the stretch it calls for."""

    accounts: int
    calls_per_minute: float
    stretch: float
    computed_at: datetime


@dataclass(frozen=True)
class PassReport:
    """What one pass did."""

    plan: Plan
    rescaled: int = 0
    placed: int = 0
    caught_up: int = 0
    enqueued: int = 0
    duplicates: int = 0
    deferred: int = 0


class Scheduler:
    """Runs passes every tick while this replica leads; `run_pass` is one pass, for tests too."""

    def __init__(self, store: JobStore, config: ScheduleConfig) -> None:
        self._store = store
        self.config = config
        self.plan: Plan | None = None
        self.passes = 0
        # The stretch every laid-out slot was last checked against; None: not since leading.
        self._checked_stretch: float | None = None

    async def run(self) -> None:
        """Passes until cancelled (when leadership ends). A failed pass is retried next tick."""
        self.plan = None
        self._checked_stretch = None
        log.info(
            "scheduler started: incremental every %s, full every %s, tick %s",
            self.config.incremental_interval,
            self.config.full_interval,
            self.config.tick,
        )
        while True:
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blipped; the next tick tries again
                log.warning("scheduler pass failed: %s", exc)
            await asyncio.sleep(self.config.tick.total_seconds())

    async def run_pass(self, now: datetime | None = None) -> PassReport:
        now = now or self._store.clock()
        plan = await self._refresh_plan(now)
        rescaled = 0
        if plan.stretch != self._checked_stretch:
            rescaled = await self._rescale(now, plan.stretch)
            self._checked_stretch = plan.stretch
        placed = await self._place(now, plan.stretch)
        caught_up = await self._catch_up(now)
        enqueued = duplicates = deferred = 0
        cursor: tuple[datetime, uuid.UUID] | None = None
        while True:
            batch = await self._store.schedules.schedule_enqueue_due(
                now=now,
                horizon=now + self.config.tick,
                priority=self.config.priority,
                max_attempts=self.config.max_attempts,
                cursor=cursor,
                limit=self.config.batch_size,
            )
            enqueued += batch.enqueued
            duplicates += batch.duplicates
            deferred += batch.deferred
            cursor = batch.cursor
            if batch.rows < self.config.batch_size:
                break
        if enqueued:
            log.debug("scheduled %d syncs (%d already queued)", enqueued, duplicates)
        self.passes += 1
        return PassReport(
            plan=plan,
            rescaled=rescaled,
            placed=placed,
            caught_up=caught_up,
            enqueued=enqueued,
            duplicates=duplicates,
            deferred=deferred,
        )

    async def _refresh_plan(self, now: datetime) -> Plan:
        previous = self.plan
        if (
            previous is not None
            and previous.computed_at <= now < previous.computed_at + PLAN_REFRESH
        ):
            return previous
        config = self.config
        lookback = min(
            ESTIMATE_LOOKBACK_INTERVALS * max(config.incremental_interval, config.full_interval),
            ESTIMATE_LOOKBACK_MAX,
        )
        demands = await self._store.schedules.schedule_demand(config.defaults, since=now - lookback)
        needed = calls_per_minute(demands)
        plan = Plan(
            accounts=len(demands),
            calls_per_minute=needed,
            stretch=stretch_factor(needed, config.quota_per_minute),
            computed_at=now,
        )
        if plan.stretch > 1.0 and (previous is None or previous.stretch != plan.stretch):
            log.warning(
                "SCHEDULE_INCREMENTAL_INTERVAL=%s and SCHEDULE_FULL_INTERVAL=%s cannot be met "
                "with the Google quota: scheduled syncs of %d accounts need about %.0f calls a "
                "minute, more than the %.0f%% of %.0f a minute they may use; every interval is "
                "stretched %.2fx (incremental every %s, full every %s)",
                config.incremental_interval,
                config.full_interval,
                plan.accounts,
                plan.calls_per_minute,
                QUOTA_SAFETY * 100,
                config.quota_per_minute,
                plan.stretch,
                config.incremental_interval * plan.stretch,
                config.full_interval * plan.stretch,
            )
        elif plan.stretch == 1.0 and previous is not None and previous.stretch > 1.0:
            log.info(
                "scheduled syncs fit the Google quota again: intervals are no longer stretched"
            )
        self.plan = plan
        return plan

    async def _rescale(self, now: datetime, stretch: float) -> int:
        changed = 0
        after: uuid.UUID | None = None
        while True:
            read, moved, after = await self._store.schedules.schedule_regrid(
                now=now,
                defaults=self.config.defaults,
                stretch=stretch,
                after=after,
                limit=self.config.batch_size,
            )
            changed += moved
            if read < self.config.batch_size:
                break
        if changed:
            log.info("rescaled the slots of %d accounts to a %.2fx stretch", changed, stretch)
        return changed

    async def _place(self, now: datetime, stretch: float) -> int:
        async with self._store.schedules.schedule_placement_turn() as ours:
            if not ours:
                return 0  # another scheduler is laying accounts out right now
            return await self._place_all(now, stretch)

    async def _place_all(self, now: datetime, stretch: float) -> int:
        count = await self._store.schedules.schedule_unplaced_count()
        position = 0
        after: uuid.UUID | None = None
        while position < count:
            read, after = await self._store.schedules.schedule_place(
                start=now,
                count=count,
                position=position,
                after=after,
                limit=min(self.config.batch_size, count - position),
                defaults=self.config.defaults,
                stretch=stretch,
            )
            if read == 0:
                break
            position += read
        if position:
            log.info(
                "laid out %d accounts: a round spread over %s (incremental), %s (full)",
                position,
                self.config.incremental_interval * stretch,
                self.config.full_interval * stretch,
            )
        return position

    async def _catch_up(self, now: datetime) -> int:
        moved_total = 0
        cursor: tuple[datetime, uuid.UUID] | None = None
        while True:
            moved, cursor = await self._store.schedules.schedule_catch_up(
                now=now,
                missed_before=now - self.config.grace,
                cursor=cursor,
                limit=self.config.batch_size,
            )
            moved_total += moved
            if moved < self.config.batch_size:
                break
        if moved_total:
            log.warning(
                "%d accounts missed scheduled slots by more than %s (was no replica leading?): "
                "each gets one sync at its next slot instead of one per missed round",
                moved_total,
                self.config.grace,
            )
        return moved_total
