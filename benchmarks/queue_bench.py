"""QueueService and the worker on PostgreSQL, each figure next to PostgreSQL's own limit.

Everything runs as its own process on one scratch database, as in production: QueueService
(`python -m queue_service`), the project's worker (`python -m clients.worker`), a stand-in
SyncService that answers at once (`benchmarks.fake_sync`) and, for the whole system, the real
SyncService and the Google emulator. This process drives them through the public gRPC contract
and measures; `benchmarks.rawsql` measures the same statements straight through psycopg in the
same run (the "PostgreSQL alone" column; ratios are what compare across runs on a noisy
machine). The figures (numbered as in the table) live in `figures_*.py`:

1. drain of pre-enqueued jobs by the worker (concurrency 64, instant SyncService);
2. the whole system: worker, SyncService, emulator (one location, a few reviews per account);
3. enqueue-to-start with an idle waiting worker, jobs enqueued at a steady rate;
4. enqueue: one EnqueueSync at a time, 16 in flight, EnqueueSyncBatch of 1,000, and 200
   concurrent users each with their own JWT;
5. idle cost: database transactions per second with 8 workers waiting on an empty queue;
6. PickJobs(10) latency with a big table of finished and pending jobs against a near-empty
   one, and with the table settings of fast PostgreSQL queues;
7. RSS of QueueService and the worker while draining many jobs;
L. the older figures: 4 pickers with PickJobs(10) + ReportResults, and PickJobs(1) +
   CompleteJob.

The services and the worker read their settings from this process's environment as usual (a
pool size, several QueueService processes...), except tracing, which is off as by default; a
service that runs as a supervisor of several processes is measured with all of them.

This module holds what they share: the processes, the scratch database's observation (job
counts, backends, transactions), and drains by the worker. Drains stop at a time limit
(reported) so that a slow build still finishes; the rate is then measured over what drained.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2

from benchmarks.harness import (
    ROOT,
    Child,
    CpuWindow,
    Processes,
    free_port,
    progress,
    wait_for_health,
    wait_for_port,
)
from benchmarks.rawsql import RawFigure, RawQueue, libpq_url
from benchmarks.report import Row
from benchmarks.seed import Seeder
from clients.healthcheck import health_check_rpc
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from migrations.scratch import postgres_server_url

PYTHON = sys.executable
# The connections of the raw drains: enough to keep both of a small machine's cores busy.
RAW_CONNECTIONS = 4
FIGURES = ("enqueue", "drain", "legacy", "latency", "idle", "clients", "rss", "system", "pick")
ROW_ORDER = ("1", "1h", "1p", "2", "3", "4a", "4b", "4c", "4d", "5", "6", "7", "L1", "L2")

# Whether the worker named by the parameter has picked a job yet (both lookups are cheap: a
# partial index, a small table).
_PICKED_SQL = (
    "SELECT EXISTS (SELECT 1 FROM sync_queue WHERE status = 'processing')"
    " OR EXISTS (SELECT 1 FROM sync_worker_runs WHERE worker_id = %s AND jobs_picked > 0)"
)
# How long a PostgreSQL backend may keep its statistics before publishing them (PostgreSQL 15
# publishes at most once a second, and an idle backend within 10 seconds).
STATS_LAG = 11.0


@dataclass(frozen=True)
class Sizes:
    """How big each figure is; `quick()` is the smoke run."""

    accounts: int = 100_000
    users: int = 200
    enqueue_one_at_a_time: int = 2_000
    enqueue_in_flight: int = 5_000
    enqueue_batched: int = 20_000
    drain_jobs: int = 50_000
    drain_time_limit: float = 120.0
    raw_one_per_statement_jobs: int = 5_000
    concurrency: int = 64
    legacy_batched_jobs: int = 10_000
    legacy_single_jobs: int = 2_000
    latency_jobs: int = 1_000
    latency_rate: float = 100.0
    idle_workers: int = 8
    idle_seconds: float = 30.0
    # Also count QueueService with no worker (a second window, after the statistics settle).
    idle_baseline: bool = True
    clients: int = 200
    clients_seconds: float = 60.0
    big_finished: int = 1_000_000
    big_pending: int = 100_000
    pick_samples: int = 300
    rss_jobs: int = 100_000
    rss_time_limit: float = 90.0
    system_accounts: int = 500
    system_reviews: int = 3
    system_time_limit: float = 120.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            accounts=20_000,
            enqueue_one_at_a_time=300,
            enqueue_in_flight=500,
            enqueue_batched=5_000,
            drain_jobs=10_000,
            drain_time_limit=8.0,
            raw_one_per_statement_jobs=500,
            legacy_batched_jobs=2_000,
            legacy_single_jobs=300,
            latency_jobs=200,
            idle_seconds=6.0,
            idle_baseline=False,
            clients_seconds=10.0,
            big_finished=100_000,
            big_pending=10_000,
            pick_samples=60,
            rss_jobs=20_000,
            rss_time_limit=8.0,
            system_accounts=100,
            system_time_limit=30.0,
        )


@dataclass
class DrainResult:
    """A drain by one worker: jobs it finished between its first pick and its last
    completion (server-side timestamps), and the CPU of every process meanwhile."""

    jobs: int
    seconds: float
    picks: int
    time_limited: bool
    cpu: CpuWindow
    failed: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0


def ms_text(value: float) -> str:
    return f"{value:.3f} ms" if value < 1 else f"{value:.2f} ms"


def cpu_text(cpu: CpuWindow, units: int, unit: str) -> str:
    """ "1.23 ms per job (queue 0.8 ms, worker ...)", with the sessions opened when any were."""
    per = cpu.per_unit_ms(units)
    if not per:
        return ""
    parts = [f"{n.removesuffix('_ms')} {ms_text(v)}" for n, v in per.items() if n != "total_ms"]
    text = f"{ms_text(per['total_ms'])} per {unit} ({', '.join(parts)})"
    if cpu.sessions_opened:
        text += (
            f"; {cpu.sessions_opened:,} database sessions opened meanwhile (the PostgreSQL "
            f"share misses those shorter than {cpu.interval:g} s)"
        )
    return text


class QueueBench:
    """One run of the queue figures on one scratch database: QueueService and the stand-in
    SyncService stay up for the whole run; workers come and go with the figures."""

    def __init__(self, sizes: Sizes, database_url: str, log_dir: Path, only: set[str]) -> None:
        self.sizes = sizes
        self.url = database_url
        self.log_dir = log_dir
        self.only = only
        self.seed = Seeder(database_url)
        self.raw = RawQueue(database_url)
        self.trigger = secrets.token_urlsafe(24)
        self.jwt_secret = secrets.token_urlsafe(48)
        self.worker_md: tuple[tuple[str, str], ...] = (("x-trigger-secret", self.trigger),)
        # The services run as deployed: no tracing exporter, none of the benchmark's own gRPC
        # settings.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OTEL_") and k != "GRPC_ENABLE_FORK_SUPPORT"
        }
        self.env = {
            **inherited,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "TRIGGER_SECRET": self.trigger,
            "JWT_SECRET": self.jwt_secret,
            "LOG_LEVEL": "WARNING",
            "OTEL_TRACES_EXPORTER": "none",
            # The benchmark owns every job in the queue: no periodic syncs.
            "SCHEDULER_ENABLED": "false",
        }
        self.rows: list[Row] = []
        self.figures: dict[str, Any] = {}
        self.users: list[uuid.UUID] = []
        self.accounts: list[str] = []
        self.procs = Processes(log_dir)
        self.queue: Child | None = None
        self.fake: Child | None = None
        self.queue_addr = ""
        self.fake_addr = ""
        # PostgreSQL alone enqueueing one job per statement on 16 connections (4b, 4d).
        self.raw_16: RawFigure | None = None
        self._monitor: psycopg.AsyncConnection[Any] | None = None
        self._admin: psycopg.AsyncConnection[Any] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.QueueServiceAsyncStub | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> QueueBench:
        progress(f"seeding {self.sizes.accounts:,} accounts for {self.sizes.users} users")
        self.users = [uuid.uuid4() for _ in range(self.sizes.users)]
        self.accounts = self.seed.accounts(self.sizes.accounts, self.users)
        self.seed.execute("CREATE TABLE bench_probe (id int PRIMARY KEY, n bigint NOT NULL)")
        self.seed.execute("INSERT INTO bench_probe VALUES (1, 0)")
        self._monitor = await psycopg.AsyncConnection.connect(libpq_url(self.url), autocommit=True)
        self._admin = await psycopg.AsyncConnection.connect(
            libpq_url(postgres_server_url().render_as_string(hide_password=False)),
            autocommit=True,
        )
        port = free_port()
        self.queue_addr = f"127.0.0.1:{port}"
        self.queue = await self.procs.start(
            "queue",
            [PYTHON, "-m", "queue_service"],
            # Users enqueue as fast as they can here: the queue is measured, not the rate limit.
            {**self.env, "QUEUE_LISTEN_ADDR": self.queue_addr, "ENQUEUE_RATE_PER_USER": "0"},
        )
        await wait_for_health(self.queue_addr, self.queue)
        self._channel = grpc.aio.insecure_channel(self.queue_addr)
        self._stub = pb_grpc.QueueServiceStub(self._channel)
        port = free_port()
        self.fake = await self.procs.start(
            "fake-sync", [PYTHON, "-m", "benchmarks.fake_sync", "--port", str(port)], self.env
        )
        await wait_for_port(port, self.fake)
        self.fake_addr = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        await self.procs.stop_all()
        for conn in (self._monitor, self._admin):
            if conn is not None:
                await conn.close()

    @property
    def stub(self) -> pb_grpc.QueueServiceAsyncStub:
        assert self._stub is not None
        return self._stub

    async def grpc_floor(self, calls: int) -> float:
        """Calls per second of the standard health Check on QueueService, one at a time over
        the same channel: gRPC's own round trip between two Python processes, with no
        authentication, no handler work and no database. No unary RPC can be faster."""
        assert self._channel is not None
        check = health_check_rpc(self._channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(min(calls, 100)):
            await check(request)
        started = time.perf_counter()
        for _ in range(calls):
            await check(request)
        return calls / (time.perf_counter() - started)

    @property
    def queue_pid(self) -> int:
        assert self.queue is not None
        return self.queue.pid

    @property
    def fake_pid(self) -> int:
        assert self.fake is not None
        return self.fake.pid

    async def start_worker(
        self,
        name: str,
        *,
        concurrency: int | None,
        sync_addr: str | None = None,
        module: str = "clients.worker",
        prefetch: int | None = None,
    ) -> Child:
        """`python -m clients.worker` (or another `module` that runs the worker) named `name`
        (its WORKER_ID); its default concurrency and prefetch when they are None."""
        env = {
            **self.env,
            "QUEUE_ADDR": self.queue_addr,
            "SYNC_ADDR": sync_addr or self.fake_addr,
            "WORKER_ID": name,
        }
        if concurrency is not None:
            env["WORKER_CONCURRENCY"] = str(concurrency)
        if prefetch is not None:
            env["WORKER_PREFETCH"] = str(prefetch)
        return await self.procs.start(name, [PYTHON, "-m", module], env)

    def wanted(self, figure: str) -> bool:
        return not self.only or figure in self.only

    def cpu_window(self, processes: dict[str, int], *, client: bool = False) -> CpuWindow:
        """A CPU window over these processes and the scratch database's backends."""
        return CpuWindow(processes, backends=self.backends, sessions=self.sessions, client=client)

    # -- the database, observed ---------------------------------------------------------------

    async def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """A query on the benchmark's own connection (never counted as the system's work)."""
        assert self._monitor is not None
        cursor = await self._monitor.execute(sql, params)
        return await cursor.fetchall() if cursor.description else []

    async def backends(self) -> list[int]:
        """PostgreSQL backends serving the scratch database, the benchmark's own excluded.

        Asked on the connection to another database: sampled ten times a second, the question
        would otherwise count among the scratch database's own transactions (figure 5).
        """
        assert self._admin is not None and self._monitor is not None
        cursor = await self._admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s"
            " AND backend_type = 'client backend'",
            (self.database_name, self._monitor.info.backend_pid),
        )
        return [row[0] for row in await cursor.fetchall()]

    async def _database_stat(self, expression: str) -> int:
        """A pg_stat_database figure of the scratch database, read from another database so
        that reading it does not add to it."""
        assert self._admin is not None
        cursor = await self._admin.execute(
            f"SELECT {expression} FROM pg_stat_database WHERE datname = %s",  # noqa: S608 - constant
            (self.database_name,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def transactions(self) -> int:
        """Committed and rolled-back transactions of the scratch database so far."""
        return await self._database_stat("xact_commit + xact_rollback")

    async def sessions(self) -> int:
        """Sessions opened to the scratch database so far."""
        return await self._database_stat("sessions")

    @property
    def database_name(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("?", 1)[0]

    async def active_jobs(self) -> int:
        rows = await self.query(
            "SELECT count(*) FROM sync_queue WHERE status IN ('pending', 'processing')"
        )
        return int(rows[0][0])

    async def commit_rate(self, seconds: float = 1.0) -> float:
        """Autocommit one-row UPDATEs per second on one connection: how fast this machine
        commits right now, which bounds every figure of a queue that commits per call."""
        (conn,) = await self.raw.connect(1)
        try:
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                await conn.execute("UPDATE bench_probe SET n = n + 1 WHERE id = 1")
                done += 1
            return done / (time.perf_counter() - started)
        finally:
            await conn.close()

    async def wait_for_runs(self, count: int, timeout: float = 60.0) -> None:
        """Waits until `count` worker runs are running (the workers are up and picking)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await self.query(
                "SELECT count(*) FROM sync_worker_runs WHERE status = 'running'"
            )
            if rows[0][0] >= count:
                return
            self.procs.check_alive()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{count} worker run(s) did not start within {timeout:.0f} s")

    async def wait_until_drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while await self.active_jobs():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still pending or processing after {timeout:.0f} s")
            self.procs.check_alive()
            await asyncio.sleep(0.1)

    # -- enqueue and drain --------------------------------------------------------------------

    async def enqueue_batches(
        self, accounts: Sequence[str], view: pb.JobView.ValueType = pb.JOB_VIEW_UNSPECIFIED
    ) -> None:
        """A full sync of each account through EnqueueSyncBatch, 1,000 per call."""
        for start in range(0, len(accounts), 1000):
            await self.stub.EnqueueSyncBatch(
                pb.EnqueueSyncBatchRequest(
                    items=[
                        pb.EnqueueSyncRequest(account_id=a, sync_type=pb.SYNC_TYPE_FULL)
                        for a in accounts[start : start + 1000]
                    ],
                    view=view,
                ),
                metadata=self.worker_md,
                timeout=120,
            )

    async def drain_with_worker(
        self,
        label: str,
        total: int,
        *,
        time_limit: float,
        processes: dict[str, int],
        start_worker: Callable[[], Awaitable[Child]],
        on_start: Callable[[Child], None] | None = None,
    ) -> DrainResult:
        """Starts a worker on `total` pending jobs and waits until they are drained or the time
        limit passes. CPU is counted from the worker's first pick (its start-up excluded) to the
        end, for `processes`, the worker and the backends."""
        worker = await start_worker()
        deadline = time.monotonic() + 60
        while not (await self.query(_PICKED_SQL, (worker.name,)))[0][0]:
            self.procs.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the worker picked nothing within 60 s")
            await asyncio.sleep(0.02)
        cpu = self.cpu_window({**processes, "worker": worker.pid})
        await cpu.start()
        if on_start is not None:
            on_start(worker)
        began = last_report = time.monotonic()
        time_limited = False
        while remaining := await self.active_jobs():
            now = time.monotonic()
            if now - began > time_limit:
                time_limited = True
                progress(f"{label}: time limit of {time_limit:.0f} s reached")
                break
            if now - last_report >= 5:
                last_report = now
                done = total - remaining
                progress(
                    f"{label}: {done:,} of {total:,} jobs done "
                    f"({done / (now - began):,.0f} jobs/s so far)"
                )
            self.procs.check_alive()
            await asyncio.sleep(0.25)
        await cpu.stop()
        await self.procs.stop(worker, hurry=True)
        rows = await self.query(
            "SELECT count(*), min(started_at), max(completed_at), count(DISTINCT started_at)"
            " FROM sync_queue WHERE status = 'succeeded' AND worker_id = %s",
            (worker.name,),
        )
        count, first, last, picks = rows[0]
        failed = (
            await self.query(
                "SELECT count(*) FROM sync_queue"
                " WHERE status NOT IN ('succeeded', 'pending', 'processing')"
            )
        )[0][0]
        seconds = (last - first).total_seconds() if count else 0.0
        result = DrainResult(count, seconds, picks, time_limited, cpu, failed)
        progress(
            f"{label}: {count:,} jobs in {seconds:.1f} s = {result.rate:,.0f} jobs/s"
            + (" (time-limited)" if time_limited else "")
        )
        return result

    async def raw_drain(self, jobs: int, *, pick: int, together: bool = True) -> RawFigure:
        """PostgreSQL alone draining `jobs` seeded jobs, `pick` at a time."""
        self.seed.truncate_jobs()
        self.seed.pending_jobs(self.accounts[:jobs])
        figure = await self.raw.drain(
            pick=pick, complete_together=together, connections=RAW_CONNECTIONS
        )
        progress(
            f"PostgreSQL alone, pick {pick} + complete "
            f"{'together' if together else 'one per statement'}: {figure.rate:,.0f} jobs/s"
        )
        return figure


async def run_queue_benchmark(
    sizes: Sizes, database_url: str, log_dir: Path, only: set[str]
) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    """Runs the queue figures; returns the rows, the detailed figures and facts of the run."""
    from benchmarks import (
        figures_drain,
        figures_enqueue,
        figures_idle,
        figures_latency,
        figures_system,
    )

    steps: list[tuple[str, Callable[[QueueBench], Awaitable[None]]]] = [
        ("enqueue", figures_enqueue.enqueue_figures),
        ("drain", figures_drain.drain_figure),
        ("legacy", figures_drain.legacy_figures),
        ("latency", figures_latency.enqueue_to_start_figure),
        ("idle", figures_idle.idle_figure),
        ("clients", figures_enqueue.many_users_figure),
        ("rss", figures_drain.memory_figure),
        ("system", figures_system.system_figure),
        ("pick", figures_latency.pick_figure),
    ]
    async with QueueBench(sizes, database_url, log_dir, only) as bench:
        commits: dict[str, float] = {"start": round(await bench.commit_rate(), 1)}
        progress(f"disk: {commits['start']:,.0f} commits/s on one connection")
        for number, (name, step) in enumerate(s for s in steps if bench.wanted(s[0])):
            if number and number % 3 == 0:
                commits[f"before {name}"] = round(await bench.commit_rate(), 1)
            await step(bench)
        commits["end"] = round(await bench.commit_rate(), 1)
        progress(f"disk: {commits['end']:,.0f} commits/s on one connection")
        order = {figure: n for n, figure in enumerate(ROW_ORDER)}
        rows = sorted(bench.rows, key=lambda r: order.get(r.figure, len(order)))
        return rows, bench.figures, {"commit_rate_per_s": commits}


def sizes_dict(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)
