"""A real QueueService on a loopback port over a real database, and ways to seed it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service.app import QueueApp
from queue_service.settings import QueueSettings
from sync_service.tables import gmb_accounts
from tests.conftest import WORKER_METADATA


@dataclass
class RunningQueue:
    app: QueueApp
    stub: pb_grpc.QueueServiceStub
    channel: grpc.aio.Channel
    address: str
    database_url: str

    async def add_account(
        self, user_id: uuid.UUID | None = None, *, name: str = "Acme Coffee", active: bool = True
    ) -> uuid.UUID:
        """Inserts a gmb_accounts row (SyncService's table; tests seed it directly)."""
        account_id = uuid.uuid4()
        now = datetime.now(UTC)
        async with self.app.engine.begin() as conn:
            await conn.execute(
                sa.insert(gmb_accounts).values(
                    id=account_id,
                    user_id=user_id or uuid.uuid4(),
                    account_name=name,
                    google_account_id=f"accounts/{account_id.int % 10**12}",
                    is_active=active,
                    created_at=now,
                    updated_at=now,
                )
            )
        return account_id

    def advance_clock(self, delta: timedelta) -> None:
        """Moves the server's clock forward: leases expire, retries come due, without sleeping."""
        offset = self._clock_offset = getattr(self, "_clock_offset", timedelta(0)) + delta
        self.app.store.clock = lambda: datetime.now(UTC) + offset

    async def complete(self, job: pb.Job, **fields: object) -> pb.Job:
        response = await self.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token, **fields),
            metadata=WORKER_METADATA,
        )
        return response.job

    async def fail(self, job: pb.Job, error: str = "boom", **fields: object) -> pb.FailJobResponse:
        return await self.stub.FailJob(
            pb.FailJobRequest(job_id=job.id, lease_token=job.lease_token, error=error, **fields),
            metadata=WORKER_METADATA,
        )

    async def get(self, job_id: str) -> pb.Job:
        response = await self.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=WORKER_METADATA)
        return response.job

    async def enqueue(self, account_id: uuid.UUID, **fields: object) -> pb.Job:
        fields.setdefault("sync_type", pb.SYNC_TYPE_FULL)
        response = await self.stub.EnqueueSync(
            pb.EnqueueSyncRequest(account_id=str(account_id), **fields), metadata=WORKER_METADATA
        )
        return response.job

    async def pick(self, max_jobs: int = 1, **fields: object) -> list[pb.Job]:
        fields.setdefault("worker_id", "test-worker")
        response = await self.stub.PickJobs(
            pb.PickJobsRequest(max_jobs=max_jobs, **fields), metadata=WORKER_METADATA
        )
        return list(response.jobs)


def queue_settings(database_url: str, auth_settings, **overrides: object) -> QueueSettings:
    values: dict[str, object] = {
        "listen_addr": "127.0.0.1:0",
        "database_url": database_url,
        "auth": auth_settings,
        "retry_delay_base": timedelta(seconds=60),
        "reaper_interval": timedelta(seconds=3600),  # tests drive recovery themselves
        "pick_fallback_interval": timedelta(seconds=5),
        # Tests that are not about periodic syncs own every job in the queue.
        "scheduler_enabled": False,
    }
    values.update(overrides)
    return QueueSettings(**values)  # type: ignore[arg-type]


async def start_queue(
    settings: QueueSettings, *, clock: Callable[[], datetime] | None = None
) -> RunningQueue:
    """Starts a QueueService; `clock` replaces its store's clock before any background work
    (the scheduler's first pass included) can read the real one."""
    app = QueueApp(settings)
    if clock is not None:
        app.store.clock = clock
    port = await app.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    return RunningQueue(
        app=app,
        stub=pb_grpc.QueueServiceStub(channel),
        channel=channel,
        address=address,
        database_url=settings.database_url,
    )


async def stop_queue(running: RunningQueue) -> None:
    await running.channel.close()
    await running.app.stop(grace=1)


@pytest.fixture
async def queue(any_db_url: str, auth_settings) -> AsyncIterator[RunningQueue]:
    """QueueService on PostgreSQL and on SQLite (the test runs once for each)."""
    running = await start_queue(queue_settings(any_db_url, auth_settings))
    yield running
    await stop_queue(running)


@pytest.fixture
async def pg_queue(pg_url: str, auth_settings) -> AsyncIterator[RunningQueue]:
    """QueueService on PostgreSQL only (concurrency, LISTEN/NOTIFY, leadership)."""
    running = await start_queue(queue_settings(pg_url, auth_settings))
    yield running
    await stop_queue(running)
