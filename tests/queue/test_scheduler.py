"""Periodic syncs: what the scheduler enqueues, when, and what it never does.

Each test walks a fake clock through hours of schedule one tick at a time, running a scheduler
pass per tick and finishing ready jobs as a worker would; on PostgreSQL and on SQLite.
"""

from __future__ import annotations

import collections
import logging
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from queue_service.models import (
    DEFAULT_INTERVAL,
    Caller,
    Completion,
    EnqueueRequest,
    ScheduleChange,
    ScheduleDefaults,
    SyncType,
)
from queue_service.store import JobStore
from queue_service.tables import sync_queue
from service_runtime.database import create_engine_async
from tests.queue.scheduling import (
    T0,
    FakeClock,
    Walk,
    add_accounts,
    all_jobs,
    gaps,
    schedule_rows,
    scheduler_for,
    set_active,
)

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
TICK = timedelta(seconds=30)
DEFAULTS = ScheduleDefaults(incremental_interval=HOUR, full_interval=DAY)


class World:
    def __init__(self, url: str) -> None:
        self.engine = create_engine_async(url)
        self.clock = FakeClock()
        self.store = JobStore(self.engine, clock=self.clock)

    def walk(self, **config: object) -> Walk:
        return Walk(scheduler_for(self.store, **config), self.store, self.clock)


@pytest.fixture
async def world(any_db_url):
    w = World(any_db_url)
    yield w
    await w.engine.dispose()


def by_account(jobs):
    grouped = collections.defaultdict(list)
    for job in jobs:
        grouped[job["account_id"]].append(job)
    return grouped


async def add_history(world: World, account_ids, *, sync_type: str, api_calls: object) -> None:
    """A succeeded job per account an hour before T0, reporting `api_calls`."""
    done = T0 - HOUR
    async with world.engine.begin() as conn:
        await conn.execute(
            sa.insert(sync_queue),
            [
                {
                    "id": uuid.uuid4(),
                    "user_id": uuid.uuid4(),
                    "account_id": account_id,
                    "sync_type": sync_type,
                    "status": "succeeded",
                    "attempts": 1,
                    "max_attempts": 3,
                    "metadata": {},
                    "trace_context": {},
                    "errors": [],
                    "result": {"api_calls": api_calls},
                    "created_at": done,
                    "updated_at": done,
                    "started_at": done,
                    "completed_at": done,
                }
                for account_id in account_ids
            ],
        )


# -- one round ----------------------------------------------------------------------------------


async def test_one_round_of_100_accounts_is_spread_evenly_over_the_hour(world):
    accounts = await add_accounts(world.engine, 100)
    walk = world.walk(priority=3, tick=TICK)

    await walk.until(T0 + HOUR)

    jobs = await all_jobs(world.engine)
    assert sorted(j["account_id"] for j in jobs) == sorted(accounts)
    slots = [j["scheduled_at"] for j in jobs]
    assert min(slots) == T0 + timedelta(seconds=18)
    assert max(slots) == T0 + HOUR - timedelta(seconds=18)
    assert min(gaps(slots)) == max(gaps(slots)) == 36.0
    # Not a burst: each job was enqueued within one tick before its slot.
    for job in jobs:
        assert timedelta(0) <= job["scheduled_at"] - job["created_at"] <= TICK
    assert max(r.enqueued for r in walk.reports) == 1
    assert {j["priority"] for j in jobs} == {3}
    assert all(j["metadata"]["source"] == "scheduler" for j in jobs)
    # The day's full syncs are spread over its 24 rounds: 100/24 fall in the first hour.
    assert [j["sync_type"] for j in jobs].count("full") == 5


async def test_each_account_gets_one_sync_per_slot_and_a_full_one_replaces_an_incremental(world):
    accounts = await add_accounts(world.engine, 12)
    walk = world.walk(
        incremental_interval=timedelta(minutes=10),
        full_interval=HOUR,
        tick=timedelta(minutes=1),
    )

    await walk.until(T0 + 2 * HOUR)

    grouped = by_account(await all_jobs(world.engine))
    assert set(grouped) == set(accounts)
    for jobs in grouped.values():
        slots = [j["scheduled_at"] for j in jobs]
        assert len(jobs) == 12
        assert set(gaps(slots)) == {600.0}  # every 10 minutes, never twice, never skipped
        fulls = [j["scheduled_at"] for j in jobs if j["sync_type"] == "full"]
        assert len(fulls) == 2
        assert gaps(fulls) == [3600.0]


# -- never a duplicate --------------------------------------------------------------------------


async def test_an_account_with_a_queued_job_gets_no_second_one(world):
    busy, *others = await add_accounts(world.engine, 3)
    walk = world.walk(tick=TICK)
    queued = await world.store.job_enqueue(
        EnqueueRequest(
            account_id=busy, sync_type=SyncType.FULL, priority=15, scheduled_at=T0 + 10 * HOUR
        ),
        Caller.everyone(),
    )

    await walk.until(T0 + HOUR)

    grouped = by_account(await all_jobs(world.engine))
    assert [j["id"] for j in grouped[busy]] == [queued.job.id]
    assert all(len(grouped[a]) == 1 for a in others)
    assert sum(r.duplicates for r in walk.reports) == 1
    row = (await schedule_rows(world.engine))[busy]
    assert row["last_job_id"] == queued.job.id
    assert row["next_incremental_at"] > T0 + HOUR  # the slot counts as served


async def test_a_due_full_slot_upgrades_a_pending_incremental_job(world):
    [account] = await add_accounts(world.engine, 1)
    walk = world.walk(tick=TICK)
    queued = await world.store.job_enqueue(
        EnqueueRequest(
            account_id=account,
            sync_type=SyncType.INCREMENTAL,
            priority=15,
            scheduled_at=T0 + 10 * HOUR,
        ),
        Caller.everyone(),
    )

    # A single account is laid out half an interval ahead: its first slot is a full one.
    await walk.until(T0 + 31 * timedelta(minutes=1))

    [job] = await all_jobs(world.engine)
    assert job["id"] == queued.job.id
    assert job["sync_type"] == "full"
    assert job["priority"] == 15  # a scheduled sync never lowers a user's priority
    row = (await schedule_rows(world.engine))[account]
    assert row["next_full_at"] == T0 + 30 * timedelta(minutes=1) + DAY
    assert row["next_incremental_at"] == T0 + 90 * timedelta(minutes=1)
    assert row["last_sync_type"] == "full"


async def test_a_full_slot_waits_for_a_processing_incremental_job_and_is_not_lost(world):
    [account] = await add_accounts(world.engine, 1)
    walk = world.walk(tick=TICK)
    await world.store.job_enqueue(
        EnqueueRequest(account_id=account, sync_type=SyncType.INCREMENTAL, priority=15),
        Caller.everyone(),
    )
    [running] = await world.store.job_pick(
        max_jobs=1, lease=timedelta(hours=2), worker_id="slow-worker"
    )

    # The full slot (T0+30m) comes and goes for ten minutes, longer than the catch-up grace.
    await walk.until(T0 + 40 * timedelta(minutes=1), work=False)

    assert len(await all_jobs(world.engine)) == 1
    assert sum(r.deferred for r in walk.reports) == 21  # every tick from 29:30 to 39:30
    assert sum(r.caught_up for r in walk.reports) == 0
    assert (await schedule_rows(world.engine))[account]["next_full_at"] == T0 + 30 * timedelta(
        minutes=1
    )

    await world.store.job_complete(Completion(running.id, running.lease_token, {"api_calls": 5}))
    report = await walk.scheduler.run_pass()

    assert report.enqueued == 1
    full = [j for j in await all_jobs(world.engine) if j["status"] == "pending"]
    assert [(j["sync_type"], j["scheduled_at"]) for j in full] == [
        ("full", T0 + 30 * timedelta(minutes=1))
    ]


async def test_a_waiting_full_slot_survives_a_rescale_by_a_new_leader(world):
    [account] = await add_accounts(world.engine, 1)
    walk = world.walk(tick=TICK)
    await world.store.job_enqueue(
        EnqueueRequest(account_id=account, sync_type=SyncType.INCREMENTAL, priority=15),
        Caller.everyone(),
    )
    [running] = await world.store.job_pick(max_jobs=1, lease=timedelta(hours=2), worker_id="w")
    await walk.until(T0 + 40 * timedelta(minutes=1), work=False)

    # A new leader with another default interval rescales every row, this one included.
    successor = scheduler_for(world.store, tick=TICK, incremental_interval=2 * HOUR)
    assert (await successor.run_pass()).rescaled == 1
    await world.store.job_complete(Completion(running.id, running.lease_token, {"api_calls": 5}))
    world.clock.advance(TICK)
    report = await successor.run_pass()

    assert (report.caught_up, report.enqueued) == (0, 1)
    pending = [j for j in await all_jobs(world.engine) if j["status"] == "pending"]
    assert [(j["sync_type"], j["scheduled_at"]) for j in pending] == [
        ("full", T0 + 30 * timedelta(minutes=1))
    ]


# -- which accounts -----------------------------------------------------------------------------


async def test_deactivated_accounts_are_never_scheduled(world):
    active = await add_accounts(world.engine, 8)
    never = await add_accounts(world.engine, 3, active=False)
    walk = world.walk(tick=TICK)
    await walk.until(T0 + timedelta(minutes=1))
    deactivated = active[:2]
    await set_active(world.engine, deactivated, False)

    await walk.until(T0 + 2 * HOUR)

    grouped = by_account(await all_jobs(world.engine))
    assert set(grouped) == set(active) - set(deactivated)
    assert all(len(grouped[a]) == 2 for a in active[2:])
    rows = await schedule_rows(world.engine)
    assert not set(never) & set(rows)


async def test_a_reactivated_account_gets_one_sync_at_its_place_in_the_next_round(world):
    accounts = await add_accounts(world.engine, 4)
    walk = world.walk(tick=timedelta(minutes=5))
    await walk.until(T0 + timedelta(minutes=1))
    await set_active(world.engine, accounts, False)
    await walk.until(T0 + 5 * HOUR)
    assert await all_jobs(world.engine) == []

    await set_active(world.engine, accounts, True)
    await walk.until(T0 + 6 * HOUR)

    grouped = by_account(await all_jobs(world.engine))
    assert sorted(len(jobs) for jobs in grouped.values()) == [1, 1, 1, 1]
    assert min(gaps([jobs[0]["scheduled_at"] for jobs in grouped.values()])) == 900.0


async def test_an_override_changes_one_accounts_interval_and_an_opt_out_stops_it(world):
    fast, opted_out, *others = await add_accounts(world.engine, 5)
    await world.store.schedules.schedule_set(
        fast, ScheduleChange(incremental_interval=timedelta(minutes=15)), DEFAULTS
    )
    await world.store.schedules.schedule_set(opted_out, ScheduleChange(enabled=False), DEFAULTS)
    walk = world.walk(tick=TICK)

    await walk.until(T0 + HOUR)

    grouped = by_account(await all_jobs(world.engine))
    assert opted_out not in grouped
    assert set(gaps([j["scheduled_at"] for j in grouped[fast]])) == {900.0}
    assert len(grouped[fast]) == 4
    assert all(len(grouped[a]) == 1 for a in others)

    schedule = await world.store.schedules.schedule_set(
        opted_out, ScheduleChange(enabled=True), DEFAULTS
    )
    assert schedule.enabled and schedule.next_incremental_at is None
    await walk.until(T0 + 2 * HOUR)
    assert len(by_account(await all_jobs(world.engine))[opted_out]) == 1


async def test_changing_a_laid_out_interval_moves_the_next_slot_at_once(world):
    [account] = await add_accounts(world.engine, 1)
    await world.walk(tick=TICK).until(T0 + timedelta(seconds=1))
    before = await world.store.schedules.schedule_get(account)
    assert before.next_incremental_at == T0 + timedelta(minutes=30)

    after = await world.store.schedules.schedule_set(
        account, ScheduleChange(incremental_interval=2 * HOUR), DEFAULTS
    )

    now = world.clock.now
    assert after.incremental_interval == 2 * HOUR
    assert after.incremental_period == 2 * HOUR
    assert after.next_incremental_at - now == 2 * (before.next_incremental_at - now)
    assert after.next_full_at == before.next_full_at

    back = await world.store.schedules.schedule_set(
        account, ScheduleChange(incremental_interval=DEFAULT_INTERVAL), DEFAULTS
    )
    assert back.incremental_interval is None
    assert back.incremental_period == HOUR
    assert back.next_incremental_at == before.next_incremental_at


# -- the Google quota ---------------------------------------------------------------------------


async def test_a_round_that_does_not_fit_the_quota_is_stretched_and_says_so(world, caplog):
    accounts = await add_accounts(world.engine, 100)
    await add_history(world, accounts, sync_type="incremental", api_calls=60)
    # 100 accounts x (60 calls an hour + 10 a day) = 100.7 calls a minute; 80% of 63 is 50.4.
    walk = world.walk(tick=TICK, quota_per_minute=63)

    with caplog.at_level(logging.WARNING, logger="queue_service.scheduler"):
        await walk.until(T0 + 2 * HOUR, work=False)

    assert walk.reports[0].plan.stretch == 2.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "SCHEDULE_INCREMENTAL_INTERVAL=1:00:00" in warnings[0]
    assert "cannot be met with the Google quota" in warnings[0]
    jobs = [j for j in await all_jobs(world.engine) if j["created_at"] >= T0]  # not the history
    slots = [j["scheduled_at"] for j in jobs]
    assert sorted(j["account_id"] for j in jobs) == sorted(accounts)  # one each in two hours
    assert min(gaps(slots)) == max(gaps(slots)) == 72.0
    assert max(slots) < T0 + 2 * HOUR


async def test_unknown_call_counts_are_estimated_and_bad_ones_ignored(world):
    accounts = await add_accounts(world.engine, 100)
    await add_history(world, accounts[:50], sync_type="full", api_calls="lots")
    # No usable count: 100 x (10/60 + 10/1440) = 17.4 calls a minute against 80% of 10.
    report = await scheduler_for(world.store, quota_per_minute=10).run_pass()

    assert report.plan.calls_per_minute == pytest.approx(100 * (10 / 60 + 10 / 1440))
    assert report.plan.stretch == 2.2
    rows = await schedule_rows(world.engine)
    assert {r["incremental_period_seconds"] for r in rows.values()} == {round(3600 * 2.2)}


async def test_when_the_quota_stops_fitting_laid_out_slots_are_rescaled(world):
    accounts = await add_accounts(world.engine, 40)
    walk = world.walk(tick=TICK, quota_per_minute=50)
    await walk.until(T0 + timedelta(minutes=10), work=False)
    assert walk.reports[-1].plan.stretch == 1.0
    await add_history(world, accounts, sync_type="incremental", api_calls=120)

    # 40 x (120/60 + 10/1440) = 80.3 calls a minute; 80% of 50 is 40: stretched 2.05x.
    await walk.until(T0 + timedelta(minutes=20), work=False)

    rescaled = [r for r in walk.reports if r.rescaled]
    assert len(rescaled) == 1 and rescaled[0].plan.stretch == 2.05
    rows = (await schedule_rows(world.engine)).values()
    future = [r["next_incremental_at"] for r in rows if r["next_incremental_at"] > world.clock.now]
    assert len(future) == 40
    assert min(gaps(future)) == pytest.approx(90 * 2.05, abs=0.01)
    assert {r["incremental_period_seconds"] for r in rows} == {round(3600 * 2.05)}


# -- downtime and restarts ----------------------------------------------------------------------


async def test_after_downtime_each_account_gets_one_sync_spread_over_the_next_interval(world):
    accounts = await add_accounts(world.engine, 50)
    walk = world.walk(tick=TICK)
    await walk.until(T0 + HOUR)
    assert len(await all_jobs(world.engine)) == 50

    world.clock.advance(3 * HOUR + timedelta(minutes=17))  # no leader for three rounds and more
    back = world.clock.now
    first = await walk.scheduler.run_pass()
    await walk.until(back + HOUR)

    assert first.caught_up == 50
    assert first.enqueued <= 1  # not all at once
    later = [j for j in await all_jobs(world.engine) if j["created_at"] >= back]
    assert sorted(j["account_id"] for j in later) == sorted(accounts)  # once, not once a round
    slots = [j["scheduled_at"] for j in later]
    assert min(gaps(slots)) == max(gaps(slots)) == 72.0
    assert back <= min(slots) and max(slots) < back + HOUR


async def test_a_late_tick_serves_slots_missed_by_less_than_the_grace_at_once(world):
    await add_accounts(world.engine, 60)
    walk = world.walk(tick=TICK)
    await walk.until(T0 + timedelta(minutes=10))

    world.clock.advance(timedelta(seconds=90))  # a leader change took a minute and a half
    report = await walk.scheduler.run_pass()

    assert report.caught_up == 0
    assert report.enqueued == 2  # the slots of the missed minute and a half, ready now
    jobs = await all_jobs(world.engine)
    assert len(jobs) == 10 + 2
    assert all(j["scheduled_at"] <= world.clock.now for j in jobs)


async def test_a_new_scheduler_keeps_every_slot_where_it_was(world):
    await add_accounts(world.engine, 30)
    walk = world.walk(tick=TICK)
    await walk.until(T0 + timedelta(minutes=20))
    before = await schedule_rows(world.engine)

    report = await scheduler_for(world.store, tick=TICK).run_pass(world.clock.now - TICK)

    assert (report.placed, report.rescaled, report.caught_up, report.enqueued) == (0, 0, 0, 0)
    assert await schedule_rows(world.engine) == before


async def test_many_accounts_are_laid_out_and_served_in_bounded_batches(world):
    await add_accounts(world.engine, 230)
    walk = world.walk(tick=timedelta(minutes=5), batch_size=50)

    await walk.until(T0 + HOUR)

    assert walk.reports[0].placed == 230
    jobs = await all_jobs(world.engine)
    assert len(jobs) == 230
    assert max(r.enqueued for r in walk.reports) <= 20  # 230 an hour is 19.2 per 5 minutes
    assert min(gaps([j["scheduled_at"] for j in jobs])) == pytest.approx(3600 / 230, abs=1e-3)
