"""Helpers of the scheduler tests: a clock the test moves, accounts, a stand-in worker.

Time is a `FakeClock` given to the store: a test walks through hours of schedule in ticks,
running one scheduler pass per tick, without sleeping.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from queue_service.models import Completion, Job
from queue_service.scheduler import PassReport, ScheduleConfig, Scheduler
from queue_service.store import JobStore
from queue_service.tables import sync_queue, sync_schedules
from sync_service.tables import gmb_accounts

# A Monday at midnight: far from any real "now", so nothing passes by accident.
T0 = datetime(2030, 1, 7, tzinfo=UTC)


class FakeClock:
    """The store's clock: `now` moves only when the test says so."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


async def add_accounts(
    engine: AsyncEngine, count: int, *, active: bool = True, user_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Inserts `count` gmb_accounts rows (SyncService's table; tests seed it directly)."""
    ids = [uuid.uuid4() for _ in range(count)]
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(gmb_accounts),
            [
                {
                    "id": account_id,
                    "user_id": user_id or uuid.uuid4(),
                    "account_name": f"Shop {account_id.hex[:6]}",
                    "google_account_id": f"accounts/{account_id.int % 10**12}",
                    "is_active": active,
                    "created_at": now,
                    "updated_at": now,
                }
                for account_id in ids
            ],
        )
    return ids


async def set_active(engine: AsyncEngine, account_ids: Iterable[uuid.UUID], active: bool) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(gmb_accounts)
            .where(gmb_accounts.c.id.in_(list(account_ids)))
            .values(is_active=active)
        )


async def all_jobs(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every row of sync_queue, oldest slot first."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(sync_queue).order_by(sync_queue.c.scheduled_at, sync_queue.c.created_at)
        )
        return [dict(r) for r in rows.mappings()]


async def schedule_rows(engine: AsyncEngine) -> dict[uuid.UUID, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(sync_schedules))
        return {r["account_id"]: dict(r) for r in rows.mappings()}


async def finish_ready_jobs(store: JobStore, *, api_calls: int = 12) -> list[Job]:
    """A worker: leases every job ready now and completes it, reporting `api_calls`."""
    done: list[Job] = []
    while True:
        jobs = await store.job_pick(max_jobs=100, lease=timedelta(minutes=5), worker_id="w")
        if not jobs:
            return done
        for job in jobs:
            done.append(
                await store.job_complete(
                    Completion(job.id, job.lease_token, {"api_calls": api_calls})
                )
            )


def gaps(times: Sequence[datetime]) -> list[float]:
    """Seconds between consecutive times, sorted."""
    ordered = sorted(times)
    return [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)]


@dataclass
class Walk:
    """Runs one pass per tick from the clock's now to `until`, finishing jobs as a worker would."""

    scheduler: Scheduler
    store: JobStore
    clock: FakeClock
    # What the stand-in worker reports as each sync's Google calls.
    api_calls: int = 12
    reports: list[PassReport] = field(default_factory=list)

    async def until(self, end: datetime, *, work: bool = True) -> None:
        tick = self.scheduler.config.tick
        while self.clock.now < end:
            self.reports.append(await self.scheduler.run_pass())
            if work:
                await finish_ready_jobs(self.store, api_calls=self.api_calls)
            self.clock.advance(tick)


def scheduler_for(store: JobStore, **config: Any) -> Scheduler:
    return Scheduler(store, ScheduleConfig(**config))
