"""The leader prunes: a running QueueService deletes old finished jobs and worker runs, many
batches in one round, and keeps what its retention settings keep."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.tables import sync_queue, sync_worker_runs
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue
from tests.queue.helpers import eventually

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
async def pruning_queue(any_db_url: str, auth_settings):  # type: ignore[no-untyped-def]
    """A queue whose leader prunes at every reaper pass, two rows per DELETE."""
    running = await start_queue(
        queue_settings(
            any_db_url,
            auth_settings,
            reaper_interval=timedelta(milliseconds=50),
            prune_interval=timedelta(seconds=1),
            prune_batch_size=2,
            job_retention=timedelta(days=1),
            worker_run_retention=timedelta(days=1),
        )
    )
    yield running
    await stop_queue(running)


async def test_the_leader_prunes_every_old_finished_job_and_worker_run(pruning_queue):
    q = pruning_queue
    account = await q.add_account()
    old_jobs = []
    for _ in range(5):
        job = await q.enqueue(account)
        await q.complete((await q.pick())[0])
        old_jobs.append(uuid.UUID(job.id))
    kept_recent = await q.enqueue(account)
    await q.complete((await q.pick())[0])
    pending = await q.enqueue(account)
    runs = []
    for _ in range(5):
        run = (
            await q.stub.StartWorkerRun(
                pb.StartWorkerRunRequest(worker_id="w"), metadata=WORKER_METADATA
            )
        ).run
        await q.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(run_id=run.id, status=pb.WORKER_RUN_STATUS_COMPLETED),
            metadata=WORKER_METADATA,
        )
        runs.append(uuid.UUID(run.id))
    async with q.app.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_queue).where(sync_queue.c.id.in_(old_jobs)).values(completed_at=LONG_AGO)
        )
        await conn.execute(
            sa.update(sync_worker_runs)
            .where(sync_worker_runs.c.id.in_(runs))
            .values(started_at=LONG_AGO, finished_at=LONG_AGO)
        )

    async def remaining() -> tuple[set[str], int]:
        async with q.app.engine.connect() as conn:
            jobs = {str(i) for i in (await conn.execute(sa.select(sync_queue.c.id))).scalars()}
            run_count = (
                await conn.execute(sa.select(sa.func.count()).select_from(sync_worker_runs))
            ).scalar_one()
        return jobs, run_count

    async def pruned() -> bool:
        jobs, run_count = await remaining()
        return jobs == {kept_recent.id, pending.id} and run_count == 0

    await eventually(pruned)
