"""Background work of the queue: the lease reaper, the pruner and the scheduler, run by one leader.

Among many replicas on one PostgreSQL, the leader is whoever holds a session-level advisory
lock on a dedicated connection; if that connection drops, PostgreSQL releases the lock and
another replica takes over at its next attempt. With SQLite there is one process: it leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import psycopg

from queue_service.notifier import libpq_conninfo
from queue_service.scheduler import Scheduler
from queue_service.store import JobStore

log = logging.getLogger(__name__)

# Any fixed 64-bit key shared by every replica: "gmbsync" in ASCII.
LEADER_LOCK_KEY = 0x676D6273796E63
PRUNE_EVERY = timedelta(hours=1)


class Maintenance:
    """Recovers expired leases every `interval` and prunes old finished jobs hourly; while
    leading, also runs the scheduler of periodic syncs, if there is one."""

    def __init__(
        self,
        store: JobStore,
        *,
        database_url: str,
        interval: timedelta,
        retention: timedelta | None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self._store = store
        self._database_url = database_url
        self._interval = interval.total_seconds()
        self._retention = retention
        self.scheduler = scheduler
        self.is_leader = asyncio.Event()
        self._last_prune: float | None = None

    async def run(self) -> None:
        if self._store.is_postgres:
            await self._run_with_leadership()
        else:
            self.is_leader.set()
            await self._lead(None)

    async def _run_with_leadership(self) -> None:
        conninfo = libpq_conninfo(self._database_url)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    while True:
                        cursor = await conn.execute(
                            "SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)
                        )
                        row = await cursor.fetchone()
                        if row and row[0]:
                            log.info("elected leader: running the lease reaper")
                            self.is_leader.set()
                            await self._lead(conn)
                        await asyncio.sleep(self._interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("leader election connection lost (%s); retrying", exc)
            if self.is_leader.is_set():
                log.warning("leadership lost")
            self.is_leader.clear()
            await asyncio.sleep(self._interval)

    async def _lead(self, lock_conn: psycopg.AsyncConnection | None) -> None:
        """Runs passes until cancelled; returns (or raises) when the lock connection dies.

        The scheduler runs beside the passes and stops with them, so it runs only while this
        replica holds the lock (give or take one reaper interval after losing it, which its
        row locks make harmless).
        """
        scheduling = (
            asyncio.create_task(self.scheduler.run(), name="scheduler")
            if self.scheduler is not None
            else None
        )
        try:
            await self._maintain(lock_conn)
        finally:
            if scheduling is not None:
                scheduling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduling

    async def _maintain(self, lock_conn: psycopg.AsyncConnection | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if lock_conn is not None:
                # The lock lives as long as this connection: check it is still there.
                await lock_conn.execute("SELECT 1")
            try:
                await self.run_pass()
                if self._retention is not None and (
                    self._last_prune is None
                    or loop.time() - self._last_prune >= PRUNE_EVERY.total_seconds()
                ):
                    self._last_prune = loop.time()
                    pruned = await self._store.jobs_prune(
                        finished_before=self._store.clock() - self._retention
                    )
                    if pruned:
                        log.info("pruned %d finished jobs older than %s", pruned, self._retention)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blipped; the next pass tries again
                log.warning("maintenance pass failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def run_pass(self) -> None:
        recovered = await self._store.jobs_recover()
        if recovered.requeued or recovered.failed:
            log.warning(
                "recovered jobs of lost workers: %d requeued, %d failed",
                len(recovered.requeued),
                len(recovered.failed),
            )
