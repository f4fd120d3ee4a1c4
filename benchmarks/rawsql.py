"""The database's own limit: the queue's statements issued straight through psycopg.

Every QueueService figure of `python -m benchmarks` is printed next to what PostgreSQL does with
the same work and no gRPC, no service and no worker in between, measured in the same run on the
same scratch database, at the same batch size. These statements are hand-written equivalents of
what `queue_service/store.py` issues; they change the same rows in the same way, so their speed
is the ceiling the service can approach:

- pick: one `WITH candidates AS (SELECT id ... WHERE (status = 'pending') IS TRUE AND
  (scheduled_at IS NULL OR scheduled_at <= now) AND attempts < max_attempts ORDER BY priority
  DESC, fair_key, created_at, id LIMIT n FOR UPDATE SKIP LOCKED) UPDATE ... SET status =
  'processing', attempts + 1, started_at, updated_at, a new random lease token,
  lease_expires_at, worker_id, worker_run_id RETURNING ...` whose RETURNING rows also add the
  picks to the worker run's count (a data-modifying CTE, as the store does);
- complete: `UPDATE ... FROM unnest(ids, lease tokens, results)` fenced by id, lease token and
  `status = 'processing'`, setting succeeded, completed_at, updated_at, result (the worker's
  JSON counts), clearing the lease, and adding to the run's processed and succeeded counts in
  the same statement; one job per statement, or a batch per statement;
- enqueue: the account check (exists and active), `INSERT ... ON CONFLICT (account_id) WHERE
  status IN ('pending', 'processing') DO NOTHING` and `pg_notify`, as one statement for one job
  or for a batch (the store does the same work in one transaction of several statements).

Each statement is autocommit, as the store's pick and completion are. Two deliberate
differences, both things a fast queue does anyway: `status` values are literals (so the cached
plan always uses the partial pick index, whose predicate the pick says as the index does), and
RETURNING gives only what a worker needs (id, account, sync type, attempts, lease) instead of
the whole row.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from benchmarks.harness import cpu_seconds
from queue_service.tables import PENDING_IN_PICK_ORDER

RAW_CHANNEL = "gmbsync_bench_raw"
LEASE = timedelta(seconds=60)
# What the worker stores as a job's result after a sync that found nothing (sync_result()).
RESULT_JSON = json.dumps(
    {
        "locations_synced": 0,
        "locations_removed": 0,
        "reviews_added": 0,
        "reviews_updated": 0,
        "reviews_removed": 0,
        "api_calls": 0,
        "duration_seconds": 0.0,
        "locations_skipped": 0,
        "skipped_locations": [],
        "locations_deletions_deferred": 0,
        "resumed": False,
    }
)

# Said as the pick index's predicate and read in its order, or PostgreSQL sorts the backlog
# on every pick (as it did while this ordered by the pick order before fair keys).
PICK_SQL = f"""
WITH candidates AS (
    SELECT id FROM sync_queue
    WHERE {PENDING_IN_PICK_ORDER}
      AND (scheduled_at IS NULL OR scheduled_at <= %(now)s)
      AND attempts < max_attempts
    ORDER BY priority DESC, fair_key, created_at, id
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE sync_queue SET
        status = 'processing', attempts = attempts + 1, started_at = %(now)s,
        updated_at = %(now)s, lease_token = gen_random_uuid(), lease_expires_at = %(expires)s,
        worker_id = %(worker_id)s, worker_run_id = %(run_id)s
    WHERE id IN (SELECT id FROM candidates)
    RETURNING id, account_id, sync_type, attempts, max_attempts, lease_token, worker_run_id
), counted AS (
    UPDATE sync_worker_runs SET jobs_picked = jobs_picked + per_run.jobs
    FROM (SELECT worker_run_id, count(*) AS jobs FROM changed
          WHERE worker_run_id IS NOT NULL GROUP BY worker_run_id) AS per_run
    WHERE sync_worker_runs.id = per_run.worker_run_id
)
SELECT id, account_id, sync_type, attempts, max_attempts, lease_token FROM changed
"""  # noqa: S608 - the predicate is a constant of the schema

COMPLETE_SQL = """
WITH changed AS (
    UPDATE sync_queue SET
        status = 'succeeded', completed_at = %(now)s, updated_at = %(now)s, last_error = NULL,
        result = reported.result::jsonb, lease_token = NULL, lease_expires_at = NULL
    FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[], %(results)s::text[])
        AS reported(job_id, lease_token, result)
    WHERE sync_queue.id = reported.job_id AND sync_queue.lease_token = reported.lease_token
      AND sync_queue.status = 'processing'
    RETURNING sync_queue.id, sync_queue.worker_run_id
), counted AS (
    UPDATE sync_worker_runs SET
        jobs_processed = jobs_processed + per_run.jobs,
        jobs_succeeded = jobs_succeeded + per_run.jobs
    FROM (SELECT worker_run_id, count(*) AS jobs FROM changed
          WHERE worker_run_id IS NOT NULL GROUP BY worker_run_id) AS per_run
    WHERE sync_worker_runs.id = per_run.worker_run_id
)
SELECT count(*) FROM changed
"""

_INSERT_COLUMNS = """
INSERT INTO sync_queue (id, user_id, account_id, sync_type, status, priority, attempts,
                        max_attempts, scheduled_at, metadata, created_at, updated_at,
                        trace_context, errors)
"""
_ON_CONFLICT = """
ON CONFLICT (account_id) WHERE status IN ('pending', 'processing') DO NOTHING
RETURNING id
"""


def _enqueue_sql(where: str, *, notify: bool) -> str:
    """The enqueue statement for the accounts `where` selects; `notify` adds the pg_notify that
    wakes waiting pickers (the store sends one in every enqueue transaction)."""
    announce = f", pg_notify('{RAW_CHANNEL}', '')" if notify else ""
    return f"""
WITH inserted AS (
    {_INSERT_COLUMNS}
    SELECT gen_random_uuid(), a.user_id, a.id, 'full', 'pending', 0, 0, 3, NULL, '{{}}'::jsonb,
           %(now)s, %(now)s, '{{}}'::jsonb, '[]'::jsonb
    FROM gmb_accounts a WHERE {where} AND a.is_active
    {_ON_CONFLICT}
)
SELECT count(*){announce} FROM inserted
"""  # noqa: S608 - built from constants only


ENQUEUE_ONE_SQL = _enqueue_sql("a.id = %(account)s", notify=True)
ENQUEUE_ONE_SILENT_SQL = _enqueue_sql("a.id = %(account)s", notify=False)
ENQUEUE_MANY_SQL = _enqueue_sql("a.id = ANY(%(accounts)s::uuid[])", notify=True)


def libpq_url(database_url: str) -> str:
    """An SQLAlchemy PostgreSQL URL as a libpq URI for psycopg."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class RawFigure:
    """A raw run: work done, wall time, and the CPU it cost (this process and its backends)."""

    units: int
    seconds: float
    client_cpu: float
    backend_cpu: float
    connections: int

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0

    def as_dict(self, unit: str = "jobs") -> dict[str, Any]:
        per = max(self.units, 1)
        return {
            f"{unit}_per_s": round(self.rate, 1),
            unit: self.units,
            "seconds": round(self.seconds, 3),
            "connections": self.connections,
            "postgresql_cpu_ms_per_unit": round(1000 * self.backend_cpu / per, 4),
            "client_cpu_ms_per_unit": round(1000 * self.client_cpu / per, 4),
        }


class RawQueue:
    """Connections straight to the scratch database, for the raw figures."""

    def __init__(self, database_url: str) -> None:
        self.dsn = libpq_url(database_url)

    async def connect(self, count: int) -> list[psycopg.AsyncConnection[Any]]:
        return [
            await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) for _ in range(count)
        ]

    @staticmethod
    async def close(connections: Sequence[psycopg.AsyncConnection[Any]]) -> None:
        for conn in connections:
            await conn.close()

    @staticmethod
    async def backend_pids(connections: Sequence[psycopg.AsyncConnection[Any]]) -> list[int]:
        return [conn.info.backend_pid for conn in connections]

    async def start_run(self, conn: psycopg.AsyncConnection[Any], worker_id: str) -> uuid.UUID:
        run_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO sync_worker_runs (id, worker_id, status, metadata, started_at)"
            " VALUES (%s, %s, 'running', '{}'::jsonb, %s)",
            (run_id, worker_id, utcnow()),
        )
        return run_id

    # -- statements -------------------------------------------------------------------------

    @staticmethod
    async def pick(
        conn: psycopg.AsyncConnection[Any], n: int, worker_id: str, run_id: uuid.UUID | None
    ) -> list[tuple[Any, ...]]:
        now = utcnow()
        cursor = await conn.execute(
            PICK_SQL,
            {
                "now": now,
                "n": n,
                "expires": now + LEASE,
                "worker_id": worker_id,
                "run_id": run_id,
            },
        )
        return await cursor.fetchall()

    @staticmethod
    async def complete(conn: psycopg.AsyncConnection[Any], jobs: Sequence[tuple[Any, ...]]) -> int:
        cursor = await conn.execute(
            COMPLETE_SQL,
            {
                "now": utcnow(),
                "ids": [job[0] for job in jobs],
                "tokens": [job[5] for job in jobs],
                "results": [RESULT_JSON] * len(jobs),
            },
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    async def enqueue_one(
        conn: psycopg.AsyncConnection[Any], account: str, *, notify: bool = True
    ) -> int:
        sql = ENQUEUE_ONE_SQL if notify else ENQUEUE_ONE_SILENT_SQL
        cursor = await conn.execute(sql, {"now": utcnow(), "account": account})
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    async def enqueue_many(conn: psycopg.AsyncConnection[Any], accounts: Sequence[str]) -> int:
        cursor = await conn.execute(ENQUEUE_MANY_SQL, {"now": utcnow(), "accounts": list(accounts)})
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # -- measured runs ----------------------------------------------------------------------

    async def _measured(self, connections: int, body: Any) -> RawFigure:
        conns = await self.connect(connections)
        try:
            pids = await self.backend_pids(conns)
            backend_before = sum(cpu_seconds(p) or 0.0 for p in pids)
            client_before = time.process_time()
            started = time.perf_counter()
            units = await body(conns)
            seconds = time.perf_counter() - started
            client = time.process_time() - client_before
            backend = sum(cpu_seconds(p) or 0.0 for p in pids) - backend_before
        finally:
            await self.close(conns)
        return RawFigure(units, seconds, client, backend, connections)

    async def drain(self, *, pick: int, complete_together: bool, connections: int) -> RawFigure:
        """Every pending job picked `pick` at a time and completed (all of a pick in one
        statement, or one statement per job), on `connections` connections at once."""

        async def body(conns: list[psycopg.AsyncConnection[Any]]) -> int:
            run_id = await self.start_run(conns[0], "raw")

            async def loop(conn: psycopg.AsyncConnection[Any], number: int) -> int:
                done = 0
                while True:
                    jobs = await self.pick(conn, pick, f"raw-{number}", run_id)
                    if not jobs:
                        return done
                    if complete_together:
                        done += await self.complete(conn, jobs)
                    else:
                        for job in jobs:
                            done += await self.complete(conn, [job])

            return sum(await asyncio.gather(*(loop(c, n) for n, c in enumerate(conns))))

        return await self._measured(connections, body)

    async def enqueue(
        self, accounts: Sequence[str], *, batch: int, connections: int, notify: bool = True
    ) -> RawFigure:
        """Enqueues a job for each account, `batch` accounts per statement (`notify`: with the
        pg_notify of each enqueue, which PostgreSQL serialises at commit)."""
        chunks = [accounts[i : i + batch] for i in range(0, len(accounts), batch)]

        async def body(conns: list[psycopg.AsyncConnection[Any]]) -> int:
            async def loop(conn: psycopg.AsyncConnection[Any]) -> int:
                done = 0
                while chunks:
                    chunk = chunks.pop()
                    if batch == 1:
                        done += await self.enqueue_one(conn, chunk[0], notify=notify)
                    else:
                        done += await self.enqueue_many(conn, chunk)
                return done

            return sum(await asyncio.gather(*(loop(c) for c in conns)))

        return await self._measured(connections, body)

    async def enqueue_to_start(
        self, accounts: Sequence[str], rate: float
    ) -> list[tuple[datetime, datetime]]:
        """Enqueues one job per account at `rate` per second while a picker waits on LISTEN;
        each job is picked as soon as its notification arrives and then completed. Returns
        (created_at, started_at) of every job, both stamped by this process's clock as the
        store stamps them with the service's. A pick reads its clock before its statement
        runs, so a job enqueued in between can start a moment "before" it was created, as in
        the queue itself."""
        listener, picker, enqueuer = await self.connect(3)
        await listener.execute(f"LISTEN {RAW_CHANNEL}")
        wake = asyncio.Event()
        expected = len(accounts)
        picked: list[uuid.UUID] = []

        async def listen() -> None:
            async for _notify in listener.notifies():
                wake.set()

        async def pick_loop() -> None:
            while len(picked) < expected:
                await wake.wait()
                wake.clear()
                while True:
                    jobs = await self.pick(picker, 10, "raw-waiter", None)
                    if not jobs:
                        break
                    picked.extend(job[0] for job in jobs)
                    await self.complete(picker, jobs)

        listening = asyncio.create_task(listen())
        picking = asyncio.create_task(pick_loop())
        try:
            began = time.perf_counter()
            for index, account in enumerate(accounts):
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.enqueue_one(enqueuer, account)
            await asyncio.wait_for(picking, timeout=30)
            cursor = await enqueuer.execute(
                "SELECT created_at, started_at FROM sync_queue WHERE id = ANY(%s)", (picked,)
            )
            return [(row[0], row[1]) for row in await cursor.fetchall()]
        finally:
            picking.cancel()
            listening.cancel()
            await asyncio.gather(picking, listening, return_exceptions=True)
            await self.close([listener, picker, enqueuer])


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50 and p99 (and max) of samples in seconds, in milliseconds."""
    if not samples:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples)
    if len(ordered) == 1:
        only = round(1000 * ordered[0], 3)
        return {"p50_ms": only, "p99_ms": only, "max_ms": only}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 3),
        "p99_ms": round(1000 * cuts[98], 3),
        "max_ms": round(1000 * ordered[-1], 3),
    }
