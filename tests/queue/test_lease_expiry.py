"""A lease ends at `lease_expires_at` by the database's clock, whether or not the reaper ran.

These tests use real one-second leases (granted through the store, since PickJobs refuses
leases under five seconds) and wait, by polling the database's own clock, until they are over.
The reaper is idle here (`reaper_interval` is an hour), so nothing but the expiry itself can
make the calls fail or let another worker take the job.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.drivers import shared as driver_shared
from queue_service.models import Job
from queue_service.tables import sync_queue, sync_worker_runs
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import RunningQueue

SHORT_LEASE = timedelta(seconds=1)


async def database_now(queue: RunningQueue) -> datetime:
    """The clock leases are judged by: PostgreSQL's own, or this process's on SQLite."""
    return await queue.app.store.driver.lease_clock_now()


async def wait_until_expired(queue: RunningQueue, jobs: list[Job]) -> None:
    """Polls the database's clock until every lease of `jobs` has run out (bounded)."""
    latest = max(job.lease_expires_at for job in jobs if job.lease_expires_at is not None)
    for _ in range(200):
        if await database_now(queue) > latest:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the database's clock never passed {latest}")


async def pick_short(
    queue: RunningQueue, n: int = 1, *, worker_id: str = "slow-worker", run_id=None
) -> list[Job]:
    return await queue.app.store.job_pick(
        max_jobs=n, lease=SHORT_LEASE, worker_id=worker_id, worker_run_id=run_id
    )


def token_of(job: Job) -> str:
    return str(job.lease_token)


async def complete_over_grpc(queue: RunningQueue, job: Job) -> pb.Job:
    response = await queue.stub.CompleteJob(
        pb.CompleteJobRequest(job_id=str(job.id), lease_token=token_of(job)),
        metadata=WORKER_METADATA,
    )
    return response.job


async def run_counts(queue: RunningQueue, run_id: uuid.UUID) -> dict[str, int]:
    async with queue.app.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(
                        sync_worker_runs.c.jobs_picked,
                        sync_worker_runs.c.jobs_processed,
                        sync_worker_runs.c.jobs_succeeded,
                        sync_worker_runs.c.jobs_failed,
                        sync_worker_runs.c.jobs_released,
                    ).where(sync_worker_runs.c.id == run_id)
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


async def test_every_lease_call_of_an_expired_holder_is_refused_saying_the_lease_expired(queue):
    for _ in range(5):
        await queue.enqueue(await queue.add_account())
    jobs = await pick_short(queue, 5)
    await wait_until_expired(queue, jobs)
    extend, complete, fail, release, report = (str(j.id) for j in jobs)
    tokens = {str(j.id): token_of(j) for j in jobs}
    five_seconds = duration_pb2.Duration(seconds=5)

    calls = {
        "ExtendLease": queue.stub.ExtendLease(
            pb.ExtendLeaseRequest(
                job_id=extend, lease_token=tokens[extend], lease_duration=five_seconds
            ),
            metadata=WORKER_METADATA,
        ),
        "CompleteJob": queue.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=complete, lease_token=tokens[complete]),
            metadata=WORKER_METADATA,
        ),
        "FailJob": queue.stub.FailJob(
            pb.FailJobRequest(job_id=fail, lease_token=tokens[fail], error="late"),
            metadata=WORKER_METADATA,
        ),
        "ReleaseJob": queue.stub.ReleaseJob(
            pb.ReleaseJobRequest(job_id=release, lease_token=tokens[release]),
            metadata=WORKER_METADATA,
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert "lease expired" in err.value.details(), (name, err.value.details())
        assert "does not match" not in err.value.details(), name

    reported = await queue.stub.ReportResults(
        pb.ReportResultsRequest(
            results=[
                pb.JobResult(
                    complete=pb.CompleteJobRequest(job_id=report, lease_token=tokens[report])
                )
            ]
        ),
        metadata=WORKER_METADATA,
    )
    [ack] = reported.acks
    assert ack.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "lease expired" in ack.message

    # Refused, not applied: every job is still processing with its expired lease.
    for job in jobs:
        stored = await queue.get(str(job.id))
        assert stored.status == pb.JOB_STATUS_PROCESSING
        assert stored.attempts == 1 and stored.errors == []


async def test_a_wrong_token_is_told_it_does_not_match_not_that_the_lease_expired(queue):
    await queue.enqueue(await queue.add_account())
    [job] = await queue.pick(lease_duration=duration_pb2.Duration(seconds=60))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=job.id, lease_token=str(uuid.uuid4())),
            metadata=WORKER_METADATA,
        )

    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "lease token does not match" in err.value.details()
    assert "lease expired" not in err.value.details()


async def test_a_live_lease_is_honoured_up_to_its_expiry(queue):
    await queue.enqueue(await queue.add_account())
    [job] = await queue.app.store.job_pick(
        max_jobs=1, lease=timedelta(seconds=60), worker_id="w", worker_run_id=None
    )

    expires = await queue.app.store.lease_extend(job.id, job.lease_token, timedelta(seconds=30))

    assert expires > job.lease_expires_at - timedelta(seconds=31)
    done = await complete_over_grpc(queue, job)
    assert done.status == pb.JOB_STATUS_SUCCEEDED


async def test_a_pick_takes_over_an_expired_job_at_once_without_the_reaper(queue):
    store = queue.app.store
    lost_run = await store.worker_run_start("slow-worker", {})
    new_run = await store.worker_run_start("fast-worker", {})
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=3)
    [first] = await pick_short(queue, run_id=lost_run.id)
    await wait_until_expired(queue, [first])

    [second] = await store.job_pick(
        max_jobs=5, lease=timedelta(seconds=60), worker_id="fast-worker", worker_run_id=new_run.id
    )

    assert second.id == first.id
    assert second.lease_token != first.lease_token
    assert second.attempts == 2 and second.worker_id == "fast-worker"
    assert second.worker_run_id == new_run.id
    [lost] = second.errors
    assert lost["attempt"] == 1 and lost["worker_id"] == "slow-worker"
    assert lost["error"].startswith("worker lost: lease expired at ")
    assert second.last_error == lost["error"]
    # The lost attempt is counted on the run that lost it, the pick on the run that took it.
    assert await run_counts(queue, lost_run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_succeeded": 0,
        "jobs_failed": 1,
        "jobs_released": 0,
    }
    assert (await run_counts(queue, new_run.id))["jobs_picked"] == 1

    # The old holder is now told its token no longer matches; the new one completes.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=str(first.id), lease_token=token_of(first)),
            metadata=WORKER_METADATA,
        )
    assert "lease token does not match" in err.value.details()
    done = await complete_over_grpc(queue, second)
    assert done.status == pb.JOB_STATUS_SUCCEEDED and done.attempts == 2


async def test_a_pick_fails_an_expired_job_whose_attempts_are_used_up_instead_of_taking_it(queue):
    store = queue.app.store
    lost_run = await store.worker_run_start("doomed", {})
    await queue.enqueue(await queue.add_account(), max_attempts=1)
    [doomed] = await pick_short(queue, worker_id="doomed", run_id=lost_run.id)
    ready = await queue.enqueue(await queue.add_account())
    await wait_until_expired(queue, [doomed])

    picked = await store.job_pick(
        max_jobs=5, lease=timedelta(seconds=60), worker_id="next", worker_run_id=None
    )

    assert [str(j.id) for j in picked] == [ready.id]
    failed = await queue.get(str(doomed.id))
    assert failed.status == pb.JOB_STATUS_FAILED
    assert failed.attempts == 1
    assert failed.last_error.startswith("worker lost: lease expired at ")
    assert "doomed" in failed.last_error
    assert len(failed.errors) == 1
    assert not failed.HasField("lease_expires_at") and failed.lease_token == ""
    assert (await run_counts(queue, lost_run.id))["jobs_failed"] == 1
    # The reaper, coming later, finds nothing left to do.
    recovered = await store.jobs_recover()
    assert recovered.requeued == [] and recovered.failed == []


async def test_the_reaper_judges_expiry_by_the_same_clock(queue):
    store = queue.app.store
    await queue.enqueue(await queue.add_account(), max_attempts=2)
    [job] = await pick_short(queue)
    await wait_until_expired(queue, [job])

    recovered = await store.jobs_recover()

    assert recovered.requeued == [job.id]
    stored = await queue.get(str(job.id))
    assert stored.status == pb.JOB_STATUS_PENDING
    assert stored.last_error.startswith("worker lost: lease expired at ")


async def test_pickers_racing_the_reaper_act_on_each_expired_job_exactly_once(
    pg_queue, monkeypatch
):
    """Many pickers and reaper passes at once over expired jobs: each job is taken over by one
    picker, requeued by the reaper, or failed, exactly once; every count is exact."""
    # Small reaper batches, so that the pickers have expired jobs left to race for.
    monkeypatch.setattr(driver_shared, "RECOVER_BATCH", 5)
    store = pg_queue.app.store
    lost_run = await store.worker_run_start("lost-worker", {})
    total = 60
    for i in range(total):
        # Every third job is on its last attempt: it must fail, never be picked.
        await pg_queue.enqueue(await pg_queue.add_account(), max_attempts=1 if i % 3 == 0 else 3)
    expired = await pick_short(pg_queue, total, worker_id="lost-worker", run_id=lost_run.id)
    assert len(expired) == total
    await wait_until_expired(pg_queue, expired)
    picker_runs = [await store.worker_run_start(f"picker-{i}", {}) for i in range(8)]
    start = asyncio.Event()

    async def expired_left() -> int:
        async with pg_queue.app.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        sync_queue.c.status == "processing",
                        sync_queue.c.worker_run_id == lost_run.id,
                    )
                )
            ).scalar_one()

    async def picker(run) -> list[Job]:
        await start.wait()
        taken: list[Job] = []
        for _ in range(100):
            if not await expired_left():
                break
            taken += await store.job_pick(
                max_jobs=3,
                lease=timedelta(seconds=60),
                worker_id=run.worker_id,
                worker_run_id=run.id,
            )
        return taken

    async def reaper():
        await start.wait()
        return [await store.jobs_recover() for _ in range(4)]

    tasks = [asyncio.ensure_future(picker(run)) for run in picker_runs]
    tasks.append(asyncio.ensure_future(reaper()))
    start.set()
    *picks, passes = await asyncio.gather(*tasks)

    taken = [job.id for jobs in picks for job in jobs]
    requeued = [i for p in passes for i in p.requeued]
    reaped_failed = [i for p in passes for i in p.failed]
    assert await expired_left() == 0
    assert taken, "the pickers took over no expired job"
    assert len(taken) == len(set(taken))  # no job handed to two pickers
    assert set(taken).isdisjoint(requeued)
    async with pg_queue.app.engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    sa.select(
                        sync_queue.c.id,
                        sync_queue.c.status,
                        sync_queue.c.attempts,
                        sync_queue.c.max_attempts,
                        sync_queue.c.errors,
                        sync_queue.c.worker_run_id,
                    )
                )
            )
            .mappings()
            .all()
        )
    by_id = {row["id"]: row for row in rows}
    for row in rows:
        # Exactly one "worker lost" entry: one actor recorded the lost attempt, once.
        assert len(row["errors"]) == 1, row
        assert row["errors"][0]["error"].startswith("worker lost: lease expired at ")
        if row["max_attempts"] == 1:
            assert row["status"] == "failed" and row["attempts"] == 1, row
        elif row["id"] in set(taken):
            assert row["status"] == "processing" and row["attempts"] == 2, row
        else:
            assert row["id"] in set(requeued), row
            assert row["status"] == "pending" and row["attempts"] == 1, row
    assert {i for i in taken} | set(requeued) == {
        i for i, r in by_id.items() if r["max_attempts"] == 3
    }
    assert set(reaped_failed) <= {i for i, r in by_id.items() if r["max_attempts"] == 1}

    lost = await run_counts(pg_queue, lost_run.id)
    assert lost["jobs_picked"] == total
    assert lost["jobs_processed"] == lost["jobs_failed"] == total
    for run, jobs in zip(picker_runs, picks, strict=True):
        counts = await run_counts(pg_queue, run.id)
        assert counts["jobs_picked"] == len(jobs)
        assert all(by_id[job.id]["worker_run_id"] == run.id for job in jobs)
