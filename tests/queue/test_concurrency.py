"""Concurrency on PostgreSQL, proven rather than argued: many pickers, many enqueuers."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service.tables import sync_queue
from service_runtime.database import create_engine_async
from sync_service.tables import gmb_accounts
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue

JOBS = 2000
PICKERS = 8


async def _seed_accounts(engine, count: int) -> list[uuid.UUID]:
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(gmb_accounts),
            [
                {
                    "id": account_id,
                    "user_id": uuid.uuid4(),
                    "account_name": f"Shop {i}",
                    "google_account_id": f"accounts/{i + 1}",
                    "is_active": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, account_id in enumerate(ids)
            ],
        )
    return ids


async def test_eight_pickers_on_two_replicas_take_each_of_2000_jobs_exactly_once(
    pg_url, auth_settings
):
    replicas = [await start_queue(queue_settings(pg_url, auth_settings)) for _ in range(2)]
    try:
        accounts = await _seed_accounts(replicas[0].app.engine, JOBS)
        for start in range(0, JOBS, 1000):
            await replicas[0].stub.EnqueueSyncBatch(
                pb.EnqueueSyncBatchRequest(
                    items=[
                        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL)
                        for a in accounts[start : start + 1000]
                    ]
                ),
                metadata=WORKER_METADATA,
            )
        picked: list[str] = []

        async def picker(number: int) -> None:
            # Each picker has its own channel, as separate worker processes would.
            address = replicas[number % 2].address
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.QueueServiceStub(channel)
                while True:
                    response = await stub.PickJobs(
                        pb.PickJobsRequest(max_jobs=10, worker_id=f"picker-{number}"),
                        metadata=WORKER_METADATA,
                    )
                    if not response.jobs:
                        return
                    picked.extend(j.id for j in response.jobs)
                    acks = await stub.ReportResults(
                        pb.ReportResultsRequest(
                            results=[
                                pb.JobResult(
                                    complete=pb.CompleteJobRequest(
                                        job_id=j.id, lease_token=j.lease_token
                                    )
                                )
                                for j in response.jobs
                            ]
                        ),
                        metadata=WORKER_METADATA,
                    )
                    assert all(a.code == 0 for a in acks.acks)

        await asyncio.gather(*(picker(n) for n in range(PICKERS)))

        duplicates = [job for job, count in Counter(picked).items() if count > 1]
        assert duplicates == []
        assert len(picked) == JOBS
        async with replicas[0].app.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        sync_queue.c.status, sa.func.count(), sa.func.max(sync_queue.c.attempts)
                    ).group_by(sync_queue.c.status)
                )
            ).all()
        assert rows == [("succeeded", JOBS, 1)]
    finally:
        for replica in replicas:
            await stop_queue(replica)


async def test_fifty_concurrent_enqueues_for_one_account_make_exactly_one_job(pg_queue):
    account = await pg_queue.add_account()
    sync_types = [pb.SYNC_TYPE_INCREMENTAL] * 49 + [pb.SYNC_TYPE_FULL]

    responses = await asyncio.gather(
        *(
            pg_queue.stub.EnqueueSync(
                pb.EnqueueSyncRequest(account_id=str(account), sync_type=t, priority=i % 7),
                metadata=WORKER_METADATA,
            )
            for i, t in enumerate(sync_types)
        )
    )

    assert len({r.job.id for r in responses}) == 1
    assert sum(not r.duplicate for r in responses) == 1
    job = await pg_queue.get(responses[0].job.id)
    # The upgrades of every duplicate landed on the one job.
    assert (job.sync_type, job.priority) == (pb.SYNC_TYPE_FULL, 6)
    async with pg_queue.app.engine.connect() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(sync_queue))).scalar()
    assert count == 1


# Which side of the race a task is on: the holder's completion or the reaper. Each side gets its
# own instant of the injected clock (a contextvar, as asyncio tasks copy their context).
_SIDE: contextvars.ContextVar[str] = contextvars.ContextVar("race_side", default="holder")


def _race_clock(jobs: list[pb.Job]):  # type: ignore[no-untyped-def]
    """The instant a lease runs out, seen from both sides: a holder's completion is judged just
    before the earliest expiry (so it is still valid), the reaper just after the latest one (so
    every lease is expired to it). Fixed instants, so the outcome never hangs on how fast the
    machine is between the pick and the race."""
    expiries = [j.lease_expires_at.ToDatetime(tzinfo=UTC) for j in jobs]
    holder = min(expiries) - timedelta(milliseconds=1)
    reaper = max(expiries) + timedelta(milliseconds=1)
    return lambda: reaper if _SIDE.get() == "reaper" else holder


async def _complete_or_code(queue, job):  # type: ignore[no-untyped-def]
    try:
        return await queue.complete(job)
    except grpc.aio.AioRpcError as err:
        return err.code()


async def _lock_waiters(engine, count: int) -> None:  # type: ignore[no-untyped-def]
    """Returns once `count` sessions wait on a row lock (pg_stat_activity): the completions are
    inside their statements, blocked by the lock, not still on their way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query ILIKE '%sync_queue%'"
    )
    while True:
        async with engine.connect() as conn:
            if (await conn.execute(query)).scalar_one() >= count:
                return
        assert loop.time() < deadline, f"the completions never waited on the lock ({count})"
        await asyncio.sleep(0.02)


async def test_a_completion_and_the_reaper_racing_at_expiry_leave_one_outcome(pg_queue):
    """At the instant a lease runs out its holder's completion and the reaper race for the job.
    The interleaving is forced, each way for half of the jobs: completions already inside their
    statements (holding up on a row lock, as when they lock the row first) for the first half,
    the reaper first for the second. The reaper must skip rows an in-flight statement holds and
    the completion must then win; a completion arriving after the reaper must be refused.
    Both outcomes occur, and every job has exactly one."""
    accounts = [await pg_queue.add_account() for _ in range(16)]
    for account in accounts:
        await pg_queue.enqueue(account)
    lease = duration_pb2.Duration()
    lease.FromTimedelta(timedelta(seconds=5))
    jobs = await pg_queue.pick(max_jobs=16, lease_duration=lease)
    pg_queue.app.store.clock = _race_clock(jobs)
    # Fewer blocked completions than the service's pool holds connections, so the reaper and the
    # late completions still get one; the test's own lock and probe use an engine of their own.
    held, late = jobs[:8], jobs[8:]
    engine = create_engine_async(pg_queue.database_url)

    async def reap():  # type: ignore[no-untyped-def]
        _SIDE.set("reaper")
        return await pg_queue.app.store.jobs_recover()

    async with engine.connect() as locker:
        transaction = await locker.begin()
        await locker.execute(
            sa.select(sync_queue.c.id)
            .where(sync_queue.c.id.in_([uuid.UUID(j.id) for j in held]))
            .with_for_update()
        )
        first = [asyncio.ensure_future(_complete_or_code(pg_queue, j)) for j in held]
        await _lock_waiters(engine, len(held))
        # The completions of `held` are mid-statement; the reaper runs now, past every expiry.
        recovered = await asyncio.wait_for(reap(), timeout=30)
        await transaction.commit()
    held_results = await asyncio.gather(*first)
    late_results = [await _complete_or_code(pg_queue, j) for j in late]

    recovered_ids = {str(i) for i in recovered.requeued} | {str(i) for i in recovered.failed}
    completed_ids = {
        r.id for r in [*held_results, *late_results] if not isinstance(r, grpc.StatusCode)
    }
    # Both outcomes, each where the interleaving put it.
    assert completed_ids == {j.id for j in held}
    assert recovered_ids == {j.id for j in late}
    assert late_results == [grpc.StatusCode.FAILED_PRECONDITION] * len(late)
    # Exactly one outcome per job, and the rows say the same.
    async with engine.connect() as conn:
        rows = dict((await conn.execute(sa.select(sync_queue.c.id, sync_queue.c.status))).all())
    await engine.dispose()
    assert {str(i) for i, s in rows.items() if s == "succeeded"} == completed_ids
    assert {str(i) for i, s in rows.items() if s == "pending"} == recovered_ids


async def test_completions_and_the_reaper_released_at_once_leave_one_outcome(pg_queue):
    """The same race left to the scheduler: a barrier releases forty completions (judged just
    before expiry) and the reaper (just after) at the same instant. Whoever locks a job first
    acts; whatever the interleaving, each job has exactly one outcome and the rows agree."""
    accounts = [await pg_queue.add_account() for _ in range(40)]
    for account in accounts:
        await pg_queue.enqueue(account)
    lease = duration_pb2.Duration()
    lease.FromTimedelta(timedelta(seconds=5))
    jobs = await pg_queue.pick(max_jobs=40, lease_duration=lease)
    pg_queue.app.store.clock = _race_clock(jobs)
    barrier = asyncio.Barrier(len(jobs) + 1)

    async def complete(job):  # type: ignore[no-untyped-def]
        await barrier.wait()
        return await _complete_or_code(pg_queue, job)

    async def reap():  # type: ignore[no-untyped-def]
        _SIDE.set("reaper")
        await barrier.wait()
        return await pg_queue.app.store.jobs_recover()

    recovered, *completions = await asyncio.gather(reap(), *(complete(j) for j in jobs))

    refusals = [c for c in completions if isinstance(c, grpc.StatusCode)]
    assert set(refusals) <= {grpc.StatusCode.FAILED_PRECONDITION}
    recovered_ids = {str(i) for i in recovered.requeued} | {str(i) for i in recovered.failed}
    completed_ids = {c.id for c in completions if not isinstance(c, grpc.StatusCode)}
    assert recovered_ids.isdisjoint(completed_ids)
    assert recovered_ids | completed_ids == {j.id for j in jobs}
    assert len(refusals) == len(recovered_ids)
    async with pg_queue.app.engine.connect() as conn:
        rows = dict((await conn.execute(sa.select(sync_queue.c.id, sync_queue.c.status))).all())
    assert {str(i) for i, s in rows.items() if s == "succeeded"} == completed_ids
    assert {str(i) for i, s in rows.items() if s == "pending"} == recovered_ids


@pytest.mark.parametrize("replicas", [3])
async def test_only_one_replica_leads_the_reaper(pg_url, auth_settings, replicas):
    running = [
        await start_queue(
            queue_settings(pg_url, auth_settings, reaper_interval=timedelta(milliseconds=50))
        )
        for _ in range(replicas)
    ]
    try:
        for _ in range(100):
            leaders = [r for r in running if r.app.maintenance.is_leader.is_set()]
            if leaders:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # let the others try (and fail) to take the lock
        leaders = [r for r in running if r.app.maintenance.is_leader.is_set()]
        assert len(leaders) == 1

        # The leader goes away: another replica takes over.
        await stop_queue(leaders[0])
        running.remove(leaders[0])
        for _ in range(200):
            if any(r.app.maintenance.is_leader.is_set() for r in running):
                break
            await asyncio.sleep(0.05)
        assert sum(r.app.maintenance.is_leader.is_set() for r in running) == 1
    finally:
        for replica in running:
            await stop_queue(replica)
