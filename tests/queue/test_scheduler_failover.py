"""Periodic syncs across QueueService replicas on PostgreSQL: one leader schedules; when it goes
away another carries on with the same slots, and no slot is ever enqueued twice, not even
while two schedulers overlap."""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta

import pytest
import sqlalchemy as sa

from queue_service.store import JobStore
from service_runtime.database import create_engine_async
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue
from tests.queue.helpers import eventually
from tests.queue.scheduling import (
    T0,
    FakeClock,
    add_accounts,
    all_jobs,
    finish_ready_jobs,
    gaps,
    schedule_rows,
    scheduler_for,
)

MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)
ACCOUNTS = 40


def leaders(replicas: list[RunningQueue]) -> list[RunningQueue]:
    return [r for r in replicas if r.app.maintenance.is_leader.is_set()]


async def leader_of(replicas: list[RunningQueue]) -> RunningQueue:
    async def one_leads() -> bool:
        return len(leaders(replicas)) == 1

    await eventually(one_leads)
    return leaders(replicas)[0]


async def kill_the_leaders_lock_connection(engine) -> None:
    """Ends the session holding the leader lock, as a crashed host or a network cut would."""
    async with engine.connect() as conn:
        await conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )


@pytest.mark.parametrize("how", ["stopped", "connection killed"])
async def test_another_replica_carries_on_the_schedule_without_duplicating_a_slot(
    pg_url, auth_settings, how
):
    settings = queue_settings(
        pg_url,
        auth_settings,
        scheduler_enabled=True,
        scheduler_tick=timedelta(milliseconds=50),
        reaper_interval=timedelta(milliseconds=50),
    )
    clock = FakeClock()
    # The clock is theirs from the start: a pass begun on the real clock could lay the accounts
    # out years before T0, and the catch-up that follows would land wherever the test's clock
    # happens to be by then.
    replicas = [await start_queue(settings, clock=clock) for _ in range(2)]
    worker_engine = create_engine_async(pg_url)
    worker = JobStore(worker_engine, clock=clock)
    try:
        accounts = await add_accounts(worker_engine, ACCOUNTS)

        async def laid_out() -> bool:
            rows = await schedule_rows(worker_engine)
            return len(rows) == ACCOUNTS and all(r["next_due_at"] for r in rows.values())

        await eventually(laid_out)
        # Laid out at T0 on the test's clock: the first round falls within the first hour.
        assert all(
            T0 < r["next_due_at"] <= T0 + HOUR
            for r in (await schedule_rows(worker_engine)).values()
        )
        first = await leader_of(replicas)

        def passes(replica: RunningQueue) -> int:
            assert replica.app.scheduler is not None
            return replica.app.scheduler.passes

        async def step() -> None:
            """Two minutes of schedule, a pass of the leader begun after them, then work."""
            clock.advance(2 * MINUTE)
            seen = {id(r): passes(r) for r in replicas}

            async def passed() -> bool:
                # Whoever leads by now; a leader that has just lost its lock passes no more.
                return any(passes(r) >= seen[id(r)] + 2 for r in leaders(replicas))

            await eventually(passed, interval=0.02)
            await finish_ready_jobs(worker)

        for _ in range(15):
            await step()
        before = len(await all_jobs(worker_engine))
        if how == "stopped":
            await stop_queue(first)
            replicas.remove(first)
            assert await leader_of(replicas) is not first
        else:
            await kill_the_leaders_lock_connection(worker_engine)
        for _ in range(30):
            await step()

        jobs = await all_jobs(worker_engine)
        assert len(jobs) > before  # the schedule went on after the leader went away
        per_account = collections.defaultdict(list)
        for job in jobs:
            per_account[job["account_id"]].append(job["scheduled_at"])
        assert set(per_account) == set(accounts)
        # Every slot of the hour and a half, once: 40 in the first hour, 20 in the next half.
        assert len(jobs) == ACCOUNTS + ACCOUNTS // 2
        for slots in per_account.values():
            assert len(slots) == len(set(slots))
            assert set(gaps(slots)) <= {3600.0}
    finally:
        for replica in replicas:
            await stop_queue(replica)
        await worker_engine.dispose()


async def test_two_schedulers_at_once_never_enqueue_a_slot_twice(pg_url):
    clock = FakeClock()
    engines = [create_engine_async(pg_url) for _ in range(2)]
    stores = [JobStore(engine, clock=clock) for engine in engines]
    try:
        accounts = await add_accounts(engines[0], 200)
        schedulers = [
            scheduler_for(store, tick=timedelta(seconds=30), batch_size=20) for store in stores
        ]
        enqueued = 0

        while clock.now < T0 + HOUR:
            # Both believe they lead, as in the moment before a lost lock is noticed.
            reports = await asyncio.gather(*(s.run_pass() for s in schedulers))
            enqueued += sum(r.enqueued for r in reports)
            await finish_ready_jobs(stores[0])
            clock.advance(timedelta(seconds=30))

        jobs = await all_jobs(engines[0])
        assert sorted(j["account_id"] for j in jobs) == sorted(accounts)
        assert len({j["scheduled_at"] for j in jobs}) == 200
        assert enqueued == 200
    finally:
        for engine in engines:
            await engine.dispose()
