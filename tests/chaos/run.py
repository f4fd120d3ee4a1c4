"""One fault against one batch of jobs: enqueue, let the flow get going, strike, drain, judge.

The fault strikes once a fifth of the batch has finished, so it meets jobs in every state:
finished, in flight (mid-sync, with results waiting to be reported) and not yet picked. Then
the suite waits (polling with a deadline) until no job of the batch is pending or processing,
and judges the batch with `oracle.judge`. Recovery is measured as the longest gap between two
consecutive job endings from the moment the fault struck until the batch drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from clients import Credentials, QueueClient
from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.tables import sync_queue
from service_runtime.database import create_engine_async
from tests.chaos.cluster import Cluster
from tests.chaos.oracle import (
    FaultReport,
    JobRow,
    LogCursor,
    handed_back,
    judge,
    refused_holders,
    successful_syncs,
)
from tests.conftest import TEST_TRIGGER_SECRET

# A fault strikes once this share of the batch has ended.
STRIKE_AT = 0.2
# How long a batch may take to drain after its fault before the suite calls jobs lost.
DRAIN_TIMEOUT = 180.0
POLL = 0.05


@dataclass
class Batch:
    """A batch in flight: its jobs, and the moments the number of ended jobs grew."""

    cluster: Cluster
    job_ids: set[str]
    engine: sa.ext.asyncio.AsyncEngine
    ended: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)

    async def count_ended(self) -> int | None:
        """Jobs of the batch no longer pending or processing; None while the database is away."""
        try:
            async with self.engine.connect() as conn:
                return (
                    await conn.execute(
                        sa.select(sa.func.count()).where(
                            sync_queue.c.id.in_(self.job_ids),
                            sync_queue.c.status.not_in(["pending", "processing"]),
                        )
                    )
                ).scalar_one()
        except sa.exc.DBAPIError:
            return None

    async def watch(self) -> None:
        while True:
            ended = await self.count_ended()
            if ended is not None and ended != self.ended:
                self.ended = ended
                self.timeline.append((time.monotonic(), ended))
            await asyncio.sleep(POLL)

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL)
        return True

    async def until_async(self, probe: Callable[[], Awaitable[int]], timeout: float) -> bool:
        """Polls `probe` until it answers non-zero; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not await probe():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL)
        return True

    async def held_by(self, worker_id: str) -> int:
        """Jobs of the batch the worker holds (processing under its lease) right now."""
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        sync_queue.c.id.in_(self.job_ids),
                        sync_queue.c.status == "processing",
                        sync_queue.c.worker_id == worker_id,
                    )
                )
            ).scalar_one()

    async def rows(self) -> list[JobRow]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(
                    sync_queue.c.id,
                    sync_queue.c.status,
                    sync_queue.c.attempts,
                    sync_queue.c.max_attempts,
                    sync_queue.c.completed_at,
                ).where(sync_queue.c.id.in_(self.job_ids))
            )
            return [JobRow(str(i), s, a, m, c) for i, s, a, m, c in result]

    def longest_gap_since(self, moment: float, end: float) -> float:
        times = [moment] + [t for t, _n in self.timeline if t >= moment] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


Fault = Callable[[Batch], Awaitable[str]]


async def _previous_batch_drained(engine: sa.ext.asyncio.AsyncEngine) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    query = sa.select(sa.func.count()).where(sync_queue.c.status.in_(["pending", "processing"]))
    while True:
        async with engine.connect() as conn:
            active = (await conn.execute(query)).scalar_one()
        if not active:
            return
        assert time.monotonic() < deadline, f"{active} job(s) of an earlier batch never ended"
        await asyncio.sleep(0.2)


async def run_fault(
    cluster: Cluster,
    name: str,
    fault: Fault,
    *,
    max_attempts: int = 10,
    strike_at: float = STRIKE_AT,
) -> FaultReport:
    """Runs one batch of one job per account through `fault`; returns its line of the table.
    `fault` returns a note for the table (what it did, what it measured)."""
    await asyncio.to_thread(cluster.heal)
    sync_log = LogCursor(cluster.services["sync"].log)
    worker_logs = [LogCursor(s.log) for n, s in cluster.services.items() if n.startswith("worker")]
    queue = QueueClient.connect(
        cluster.queue_target, Credentials.trigger_secret(TEST_TRIGGER_SECRET)
    )
    engine = create_engine_async(cluster.database_url)
    try:
        # A fault that failed may have left its batch unfinished: wait, so it is not this one's.
        await _previous_batch_drained(engine)
        answers = await queue.enqueue_sync_batch(
            [
                pb.EnqueueSyncRequest(
                    account_id=account, sync_type=pb.SYNC_TYPE_FULL, max_attempts=max_attempts
                )
                for account in cluster.account_ids
            ],
            timeout=60,
        )
        assert not any(a.duplicate for a in answers), "the previous batch had not drained"
        batch = Batch(cluster, {a.job.id for a in answers}, engine)
        watcher = asyncio.create_task(batch.watch())
        total = len(batch.job_ids)
        try:
            started = await batch.until(
                lambda: batch.ended >= total * strike_at, DRAIN_TIMEOUT, "the flow to get going"
            )
            assert started, f"{name}: the flow never got going ({batch.ended} of {total} ended)"
            struck = time.monotonic()
            note = await fault(batch)
            drained = await batch.until(lambda: batch.ended >= total, DRAIN_TIMEOUT, "drain")
            end = time.monotonic()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        report = FaultReport(fault=name, jobs=total, note=note)
        report.recover_s = batch.longest_gap_since(struck, end)
        report.drain_s = end - struck
        rows = await batch.rows()
        syncs = successful_syncs(sync_log.read(), batch.job_ids)
        worker_text = [c.read() for c in worker_logs]
        refused = refused_holders(worker_text, batch.job_ids)
        released = handed_back(worker_text, batch.job_ids)
        judge(report, batch.job_ids, rows, syncs, refused, released)
        if not drained:
            report.note += f" (not drained after {DRAIN_TIMEOUT:.0f} s)"
        return report
    finally:
        await queue.close()
        await engine.dispose()
