"""Background work of the queue: the lease reaper, the pruner, the scheduler and the statistics
check, run by one leader.

The pruner runs a round (`queue_service.retention`) every `prune_every`, beside the reaper; a
round that fails (the database blipped) is tried again one reaper interval later.

Leadership is the driver's (`QueueDriver.leader_session`): on PostgreSQL a session-level
advisory lock on a dedicated connection, which another replica takes at its next attempt once
that connection drops; with SQLite there is one process, and it leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from queue_service.drivers.base import LeaderSession
from queue_service.retention import RetentionPolicy
from queue_service.scheduler import Scheduler
from queue_service.store import JobStore

log = logging.getLogger(__name__)

# How often the leader looks at the queue table's statistics: one cheap read of PostgreSQL's
# counters (the ANALYZE itself only when they lag).
STATISTICS_EVERY = 30.0


class Maintenance:
    """Recovers expired leases every `interval` and prunes old finished jobs and worker runs
    every `prune_every`; while leading, also runs the scheduler of periodic syncs, if any."""

    def __init__(
        self,
        store: JobStore,
        *,
        interval: timedelta,
        retention: RetentionPolicy | None,
        prune_every: timedelta = timedelta(hours=1),
        scheduler: Scheduler | None = None,
    ) -> None:
        self._store = store
        self._interval = interval.total_seconds()
        self._retention = retention if retention is not None and retention.enabled else None
        self._prune_every = prune_every.total_seconds()
        self.scheduler = scheduler
        self.is_leader = asyncio.Event()

    async def run(self) -> None:
        """Bids for leadership every interval; leads (passes, scheduler) while elected."""
        while True:
            try:
                async with self._store.leader_session() as session:
                    while True:
                        if await session.attempt_elect():
                            log.info("elected leader: running the lease reaper")
                            self.is_leader.set()
                            await self._lead(session)
                        await asyncio.sleep(self._interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("leader election connection lost (%s); retrying", exc)
            if self.is_leader.is_set():
                log.warning("leadership lost")
            self.is_leader.clear()
            await asyncio.sleep(self._interval)

    async def _lead(self, session: LeaderSession) -> None:
        """Runs passes until cancelled; raises when the leader session is lost.

        The scheduler and the pruner run beside the passes and stop with them, so they run
        only while this replica holds the lock (give or take one reaper interval after losing
        it, which their row locks and fixed cuts make harmless). A long pruning round never
        delays the reaper.
        """
        companions = []
        if self.scheduler is not None:
            companions.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        if self._retention is not None:
            companions.append(asyncio.create_task(self._prune_rounds(), name="pruner"))
        companions.append(asyncio.create_task(self._statistics_rounds(), name="statistics"))
        try:
            await self._maintain(session)
        finally:
            for task in companions:
                task.cancel()
            for task in companions:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _maintain(self, session: LeaderSession) -> None:
        while True:
            await session.confirm()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blipped; the next pass tries again
                log.warning("maintenance pass failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def _prune_rounds(self) -> None:
        """A pruning round at once, then every `prune_every`; a failed one is tried again
        after one reaper interval."""
        while True:
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blipped: try again soon
                log.warning("pruning round failed: %s", exc)
                await asyncio.sleep(self._interval)
                continue
            await asyncio.sleep(self._prune_every)

    async def _statistics_rounds(self) -> None:
        """Every `STATISTICS_EVERY`, refreshes the queue table's planner statistics if they
        lag behind it and autovacuum has not (`JobStore.analyze_if_stale`)."""
        while True:
            await asyncio.sleep(STATISTICS_EVERY)
            try:
                await self._store.analyze_if_stale()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blipped: the next round tries again
                log.warning("refreshing the queue's statistics failed: %s", exc)

    async def run_pass(self) -> None:
        """One reaper pass."""
        recovered = await self._store.jobs_recover()
        if recovered.requeued or recovered.failed:
            log.warning(
                "recovered jobs of lost workers: %d requeued, %d failed",
                len(recovered.requeued),
                len(recovered.failed),
            )

    async def prune(self) -> None:
        """One retention round (nothing when retention is off)."""
        if self._retention is None:
            return
        pruned = await self._store.prune(self._retention)
        if pruned.jobs or pruned.worker_runs:
            log.info(
                "pruned %d finished jobs (older than %s) and %d worker runs (older than %s)",
                pruned.jobs,
                self._retention.jobs,
                pruned.worker_runs,
                self._retention.worker_runs,
            )
