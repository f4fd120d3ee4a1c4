"""The driver conformance suite's fixtures: each test runs once per `QueueDriver`.

`db` is a driver over a fresh database (the session's PostgreSQL scratch database, emptied; or
a new SQLite file) with a deterministic retry policy, and helpers that seed accounts, read rows
back and move time. Time is injected (`Moment(now, lease_now)`), so leases expire and retries
come due without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service.drivers import Moment, PickParams, QueueDriver, driver_for
from queue_service.lifecycle import RetryPolicy
from queue_service.models import Caller, EnqueueRequest, Job, SyncType
from queue_service.tables import sync_queue, sync_worker_runs
from service_runtime.database import create_engine_async
from sync_service.tables import gmb_accounts

# A fixed instant the tests move from; far from the real clock on purpose, so that nothing in a
# driver can lean on the host's time where it was given a Moment.
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
BASE_DELAY = timedelta(seconds=60)
JITTER = 0.1
LEASE = timedelta(seconds=60)
RUN_COUNTS = ("jobs_picked", "jobs_processed", "jobs_succeeded", "jobs_failed", "jobs_released")


class SteppedRandom:
    """`RetryPolicy.random` that returns the values it is given, in turn (then the last)."""

    def __init__(self, *values: float) -> None:
        self.values = list(values) or [0.5]

    def __call__(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


@dataclass
class DriverUnderTest:
    driver: QueueDriver
    engine: AsyncEngine
    random: SteppedRandom
    # What the driver told `on_jobs_available` (SQLite; PostgreSQL announces by NOTIFY).
    told: list[int | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.driver.name

    async def add_account(
        self, *, user_id: uuid.UUID | None = None, active: bool = True, name: str = "Acme"
    ) -> uuid.UUID:
        account_id = uuid.uuid4()
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(gmb_accounts).values(
                    id=account_id,
                    user_id=user_id or uuid.uuid4(),
                    account_name=name,
                    google_account_id=f"accounts/{account_id.int % 10**12}",
                    is_active=active,
                    created_at=T0,
                    updated_at=T0,
                )
            )
        return account_id

    async def insert(
        self,
        account_id: uuid.UUID,
        *,
        at: datetime = T0,
        caller: Caller | None = None,
        **fields: Any,
    ) -> Job:
        fields.setdefault("sync_type", SyncType.FULL)
        [result] = await self.driver.job_insert_many(
            [EnqueueRequest(account_id=account_id, **fields)],
            caller=caller or Caller.everyone(),
            moment=Moment(now=at),
        )
        assert not result.duplicate
        return result.job

    async def pick(
        self,
        max_jobs: int = 10,
        *,
        at: datetime = T0,
        lease: timedelta = LEASE,
        worker_id: str = "w1",
        run_id: uuid.UUID | None = None,
    ) -> list[Job]:
        return await self.driver.job_pick(
            PickParams(max_jobs=max_jobs, lease=lease, worker_id=worker_id, worker_run_id=run_id),
            moment=Moment(now=at, lease_now=at),
        )

    async def leased(
        self, account_id: uuid.UUID | None = None, *, run_id: uuid.UUID | None = None, **fields: Any
    ) -> Job:
        """A job picked at T0 by worker w1 (for a new account unless one is given)."""
        account_id = account_id or await self.add_account()
        job = await self.insert(account_id, **fields)
        picked = await self.pick(max_jobs=1, run_id=run_id)
        assert [j.id for j in picked] == [job.id]
        return picked[0]

    async def row(self, job_id: uuid.UUID) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(sync_queue).where(sync_queue.c.id == job_id)))
                .mappings()
                .one()
            )
        return dict(row)

    async def count_jobs(self) -> int:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(sa.select(sa.func.count()).select_from(sync_queue))
            ).scalar_one()

    async def set_row(self, job_id: uuid.UUID, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(sync_queue).where(sync_queue.c.id == job_id).values(**values)
            )

    async def run_counts(self, run_id: uuid.UUID) -> dict[str, int]:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(*(sync_worker_runs.c[n] for n in RUN_COUNTS)).where(
                            sync_worker_runs.c.id == run_id
                        )
                    )
                )
                .mappings()
                .one()
            )
        return {name: value for name, value in row.items() if value}


def moment(at: datetime) -> Moment:
    """`at` by both clocks."""
    return Moment(now=at, lease_now=at)


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[DriverUnderTest]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    engine = create_engine_async(url)
    random = SteppedRandom(0.5)
    under_test = DriverUnderTest(driver=None, engine=engine, random=random)  # type: ignore[arg-type]
    under_test.driver = driver_for(
        engine,
        retry_policy=RetryPolicy(base=BASE_DELAY, jitter=JITTER, random=random),
        on_jobs_available=under_test.told.append,
    )
    yield under_test
    await engine.dispose()


# A payload no real announcement carries: once it is heard, so is everything sent before it.
_SENTINEL = 987_654_321


@dataclass
class Heard:
    """What pickers are told of ready jobs, as counts, in order."""

    db: DriverUnderTest
    counts: list[int | None] = field(default_factory=list)

    def notify(self, count: int | None = None) -> None:
        self.counts.append(count)

    async def settled(self) -> list[int | None]:
        """Everything announced so far. A listener hears NOTIFYs in commit order, so a
        sentinel sent now arrives after all of them."""
        if self.db.driver.listener(self) is None:
            heard = list(self.db.told)
            self.db.told.clear()
            return heard
        async with self.db.engine.connect() as conn:
            await conn.exec_driver_sql(f"SELECT pg_notify('gmbsync_jobs', '{_SENTINEL}')")
            await conn.commit()
        for _ in range(400):
            if _SENTINEL in self.counts:
                heard = self.counts[: self.counts.index(_SENTINEL)]
                del self.counts[: self.counts.index(_SENTINEL) + 1]
                return heard
            await asyncio.sleep(0.01)
        raise AssertionError(f"the sentinel notification never arrived (heard {self.counts})")


@pytest.fixture
async def heard(db: DriverUnderTest) -> AsyncIterator[Heard]:
    """Announcements through the driver's listener if it has one, else `on_jobs_available`."""
    recorder = Heard(db)
    listener = db.driver.listener(recorder)
    if listener is None:
        yield recorder
        return
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        await recorder.settled()  # drops the "look now" a listener sends when it connects
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
