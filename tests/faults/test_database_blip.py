"""A database blip pauses work for seconds, not for a circuit breaker's cooldown.

The whole system (emulator, QueueService, SyncService and a worker with the production breaker
settings: five failures, 30 s cooldown) runs against a private PostgreSQL while jobs flow
steadily. Then PostgreSQL is restarted (`pg_ctl restart -m fast`), or every session of the
services is ended with `pg_terminate_backend`. The longest gap between two job completions is
measured from the jobs' `completed_at` and must stay well under the cooldown: a behavioural
bound (a breaker that opened would show ~30 s), not a speed benchmark. The pause is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import migrations
from clients import Credentials, QueueClient, SyncClient
from clients.errors import ClientError
from clients.worker import Worker, WorkerConfig
from clients.worker.job import Outcome
from queue_service.app import QueueApp
from queue_service.settings import QueueSettings
from queue_service.tables import sync_queue
from service_runtime.auth import issue_token
from service_runtime.database import create_engine_async
from sync_service.app import SyncApp
from sync_service.emulator import EmulatorServer
from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET
from tests.e2e.conftest import AUTH, OWNER, free_port, sync_settings
from tests.faults.private_postgres import PrivatePostgres, private_postgres

DATABASE = "gmbsync"
ACCOUNTS = 16
# Enough jobs in flight that a blip meets several syncs at once, as in production.
CONCURRENCY = 8
# Google's answers take this long, so syncs last long enough to be caught by the blip.
GOOGLE_LATENCY = 0.05
# Completions to see before the fault (the flow is steady) and after it (work resumed).
BEFORE, AFTER = 20, 30
# The behavioural bound: a breaker that opened on the blip would pause for its 30 s cooldown.
MAX_PAUSE = timedelta(seconds=10)
# How long to wait for work to resume before giving up (the test then fails with the pause).
RESUME_TIMEOUT = 120.0


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        server.create_database(DATABASE)
        migrations.upgrade(server.url(DATABASE))
        yield server


@dataclass
class Flow:
    """The running system and a feeder that keeps every account's sync queued."""

    queue_app: QueueApp
    sync_app: SyncApp
    worker: Worker
    user_queue: QueueClient
    accounts: list[str]
    engine: sa.ext.asyncio.AsyncEngine

    async def feed(self) -> None:
        """Enqueues every account over and over: a duplicate enqueue returns the active job,
        so each account always has one job waiting or running. Errors (the blip) are ignored."""
        while True:
            for account in self.accounts:
                with contextlib.suppress(ClientError):
                    await self.user_queue.enqueue_sync(account, "full", timeout=2)
            await asyncio.sleep(0.05)

    async def completions(self, since: datetime) -> list[datetime]:
        """Completion times of succeeded jobs since `since`; [] while the database is away."""
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(sync_queue.c.completed_at)
                    .where(sync_queue.c.status == "succeeded", sync_queue.c.completed_at >= since)
                    .order_by(sync_queue.c.completed_at)
                )
                return [r for (r,) in rows]
        except sa.exc.DBAPIError:
            return []

    async def wait_for_completions(self, since: datetime, n: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if len(await self.completions(since)) >= n:
                return
            await asyncio.sleep(0.2)

    async def failed_jobs(self) -> int:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(sa.func.count()).where(sync_queue.c.status == "failed")
                )
            ).scalar_one()


@contextlib.asynccontextmanager
async def running_flow(server: PrivatePostgres) -> AsyncIterator[Flow]:
    url = server.url(DATABASE)
    emulator = EmulatorServer(
        seed=11, accounts=ACCOUNTS, locations_per_account=2, reviews_per_location=3
    )
    await emulator.start()
    emulator.state.inject("latency", latency=GOOGLE_LATENCY)
    queue_app = QueueApp(QueueSettings(listen_addr="127.0.0.1:0", database_url=url, auth=AUTH))
    queue_addr = f"127.0.0.1:{await queue_app.start()}"
    sync_port = free_port()
    sync_app = SyncApp(sync_settings(url, emulator.url, sync_port))
    await sync_app.start()
    worker_credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)
    sync = SyncClient.connect(f"127.0.0.1:{sync_port}", worker_credentials)
    owner_token = issue_token(TEST_JWT_SECRET, user_id=OWNER, role="authenticated")
    user_queue = QueueClient.connect(queue_addr, Credentials.bearer(owner_token))
    accounts = []
    for n in range(1, ACCOUNTS + 1):
        response = await sync.connect_account(
            user_id=str(OWNER),
            account_name=f"Blip Business {n}",
            google_account_id=f"accounts/{n}",
            refresh_token=f"emulator-refresh-token-{n}",
        )
        accounts.append(response.account.id)
    # The production breaker and polling settings: what an operator runs.
    worker = Worker(
        WorkerConfig(
            trigger_secret=TEST_TRIGGER_SECRET,
            queue_addr=queue_addr,
            sync_addr=f"127.0.0.1:{sync_port}",
            worker_id=f"blip-worker-{uuid.uuid4().hex[:6]}",
            concurrency=CONCURRENCY,
        )
    )
    engine = create_engine_async(url)
    flow = Flow(queue_app, sync_app, worker, user_queue, accounts, engine)
    worker_task = asyncio.create_task(worker.run())
    feeder = asyncio.create_task(flow.feed())
    try:
        yield flow
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        worker.request_stop("test finished")
        worker.request_stop("test finished")  # no grace: hand back what is left now
        await asyncio.wait_for(worker_task, 60)
        await user_queue.close()
        await sync.close()
        await sync_app.stop(grace=0.5)
        await queue_app.stop(grace=0.5)
        await engine.dispose()
        await emulator.stop()


async def measure_pause(server: PrivatePostgres, fault: Callable[[], str]) -> timedelta:
    """Runs the flow, applies `fault` once it is steady, and returns the longest gap between
    completions from just before the fault until work has clearly resumed."""
    async with running_flow(server) as flow:
        began = datetime.now(UTC)
        await flow.wait_for_completions(began, BEFORE, RESUME_TIMEOUT)
        steady = await flow.completions(began)
        assert len(steady) >= BEFORE, "the flow never got going"
        window_start = steady[-1]
        what = await asyncio.to_thread(fault)
        after = datetime.now(UTC)
        await flow.wait_for_completions(after, AFTER, RESUME_TIMEOUT)
        times = await flow.completions(window_start)
        resumed = [t for t in times if t >= after]
        failed = await flow.failed_jobs()
        breaker = flow.worker.breaker.times_opened
        outcomes = dict(flow.worker.outcomes)
    end = resumed[-1] if resumed else datetime.now(UTC)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if not resumed:
        gaps.append(end - times[-1])
    pause = max(gaps, default=end - window_start)
    print(
        f"\n{what}: longest pause between completions {pause.total_seconds():.2f} s "
        f"(circuit breaker opened {breaker} time(s); job outcomes {outcomes})"
    )
    assert len(resumed) >= AFTER, f"work did not resume within {RESUME_TIMEOUT:.0f} s"
    assert failed == 0, f"{failed} job(s) failed because of the blip"
    # The breaker guards against SyncService being down, not against a database blip, and
    # a job the blip interrupted is handed back without spending an attempt.
    assert breaker == 0, "the circuit breaker opened on a database blip"
    assert outcomes.get(Outcome.RETRYING, 0) == 0, f"the blip spent attempts: {outcomes}"
    return pause


async def test_a_postgres_restart_pauses_completions_for_seconds_not_a_cooldown(private_pg):
    def restart() -> str:
        took = private_pg.restart()
        return f"pg_ctl restart -m fast took {took:.2f} s"

    pause = await measure_pause(private_pg, restart)

    assert pause < MAX_PAUSE, f"completions paused {pause.total_seconds():.1f} s"


async def test_terminating_every_service_session_pauses_completions_for_seconds(private_pg):
    def terminate() -> str:
        ended = private_pg.terminate_backends(DATABASE)
        return f"pg_terminate_backend ended {ended} sessions"

    pause = await measure_pause(private_pg, terminate)

    assert pause < MAX_PAUSE, f"completions paused {pause.total_seconds():.1f} s"
