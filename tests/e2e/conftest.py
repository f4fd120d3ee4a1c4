"""The whole system in one test process: emulator, QueueService and SyncService on port 0.

`system` starts them against the session's PostgreSQL; workers run either in-process
(`system.start_worker()`, whose circuit breaker tests can look at) or as real processes
(`system.spawn_worker()`, for signals). Spans of every part go to one in-memory exporter,
installed once per session because OpenTelemetry's global tracer provider can be set only once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from clients import Credentials, QueueClient, SyncClient
from clients.queue import Job, JobStatus
from clients.worker import Worker, WorkerConfig
from queue_service.app import QueueApp
from queue_service.settings import QueueSettings
from service_runtime.auth import AuthSettings, issue_token
from service_runtime.database import create_engine_async
from sync_service.app import SyncApp
from sync_service.emulator import EmulatorServer
from sync_service.settings import GoogleEndpoints, GoogleSettings, SyncSettings
from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET

ROOT = Path(__file__).resolve().parents[2]
OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000e1")
TOKEN_KEY = Fernet.generate_key().decode()
AUTH = AuthSettings(jwt_secret=TEST_JWT_SECRET, trigger_secret=TEST_TRIGGER_SECRET)
# Generous: a 2-core CI machine running PostgreSQL, three servers and workers at once.
WAIT_TIMEOUT = 60.0

T = TypeVar("T")


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every finished span of the session (clear it at the start of a test that reads it)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "e2e-tests"}))
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Polls `probe` until `accept` holds for its value; fails with the last value on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}; last value: {value!r}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class System:
    """The running services, clients for them, and the workers a test started."""

    database_url: str
    emulator: EmulatorServer
    queue_app: QueueApp
    queue_addr: str
    sync_settings: SyncSettings
    sync_port: int
    sync_app: SyncApp | None
    queue: QueueClient  # as the worker role: sees every job
    sync: SyncClient
    user_queue: QueueClient  # as the accounts' owner
    workers: list[tuple[Worker, asyncio.Task[Any]]] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def sync_addr(self) -> str:
        return f"127.0.0.1:{self.sync_port}"

    async def connect_account(self, n: int = 1, *, refresh_token: str | None = None) -> str:
        """Connects emulator account n for OWNER; returns the account id."""
        response = await self.sync.connect_account(
            user_id=str(OWNER),
            account_name=f"E2E Business {n}",
            google_account_id=f"accounts/{n}",
            refresh_token=refresh_token or f"emulator-refresh-token-{n}",
        )
        return response.account.id

    async def enqueue(self, account_id: str, **fields: Any) -> Job:
        response = await self.user_queue.enqueue_sync(account_id, "full", **fields)
        return response.job

    async def job(self, job_id: str) -> Job:
        return await self.queue.get_job(job_id)

    async def wait_for_job(
        self, job_id: str, accept: Callable[[Job], bool], what: str = "job state"
    ) -> Job:
        return await eventually(lambda: self.job(job_id), accept, what=what)

    async def wait_for_status(self, job_id: str, status: int) -> Job:
        name = JobStatus.Name(status)
        return await self.wait_for_job(job_id, lambda j: j.status == status, what=name)

    def worker_config(self, **overrides: Any) -> WorkerConfig:
        values: dict[str, Any] = {
            "trigger_secret": TEST_TRIGGER_SECRET,
            "queue_addr": self.queue_addr,
            "sync_addr": self.sync_addr,
            "worker_id": f"e2e-worker-{uuid.uuid4().hex[:6]}",
            "concurrency": 2,
            "job_timeout": timedelta(seconds=30),
            "lease_duration": timedelta(seconds=5),
            "poll_wait": timedelta(seconds=1),
            "connect_timeout": timedelta(milliseconds=500),
            "circuit_breaker_threshold": 2,
            "circuit_breaker_cooldown": timedelta(milliseconds=500),
            "shutdown_grace": timedelta(seconds=10),
        }
        values.update(overrides)
        return WorkerConfig(**values)

    def start_worker(self, **overrides: Any) -> Worker:
        """An in-process worker running until stop_workers()."""
        worker = Worker(self.worker_config(**overrides))
        self.workers.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def stop_workers(self) -> list[Any]:
        for worker, _task in self.workers:
            if not worker.stopping:
                worker.request_stop("test finished")
        summaries = [await task for _worker, task in self.workers]
        self.workers.clear()
        return summaries

    def spawn_worker(self, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
        """`python -m clients.worker` as a real process, configured by environment, its output
        in `log_path` (a file, so that a chatty child never blocks on a full pipe)."""
        environ = {
            **os.environ,
            "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
            "QUEUE_ADDR": self.queue_addr,
            "SYNC_ADDR": self.sync_addr,
            "LEASE_DURATION": "5s",
            "POLL_WAIT": "1s",
            "WORKER_CONCURRENCY": "1",
            "OTEL_TRACES_EXPORTER": "none",
            **env,
        }
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "clients.worker"],
                cwd=ROOT,
                env=environ,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    async def restart_queue(self) -> None:
        """Stops QueueService and starts a new one on the same port and database."""
        await self.queue_app.stop(grace=0.5)
        settings = dataclasses.replace(self.queue_app.settings, listen_addr=self.queue_addr)
        self.queue_app = QueueApp(settings)
        await self.queue_app.start()
        # The test's own channels saw the old server go away and may sit in reconnect backoff;
        # a call made now would fail fast instead of reaching the new server.
        for client in (self.queue, self.user_queue):
            await client.wait_ready(10.0)

    async def start_sync(self) -> None:
        """(Re)starts SyncService on its fixed port."""
        self.sync_app = SyncApp(self.sync_settings)
        await self.sync_app.start()

    async def stop_sync(self) -> None:
        if self.sync_app is not None:
            await self.sync_app.stop(grace=0.5)
            self.sync_app = None

    async def execute(self, statement: str, **params: Any) -> None:
        engine = create_engine_async(self.database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(statement), params)
        finally:
            await engine.dispose()

    async def scalar(self, query: str, **params: Any) -> Any:
        engine = create_engine_async(self.database_url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(sa.text(query), params)).scalar()
        finally:
            await engine.dispose()


async def wait_process(process: subprocess.Popen[bytes], timeout: float = WAIT_TIMEOUT) -> int:
    """The exit code of a child process, waited for without blocking the event loop."""
    return await asyncio.wait_for(asyncio.to_thread(process.wait), timeout)


def sync_settings(database_url: str, emulator_url: str, port: int) -> SyncSettings:
    google = GoogleSettings(
        endpoints=GoogleEndpoints.rooted(emulator_url),
        # The queue retries failed syncs in these tests, not SyncService's in-call retries.
        max_retries=0,
        retry_base_delay=timedelta(milliseconds=5),
        max_in_call_wait=timedelta(seconds=1),
        request_timeout=timedelta(seconds=20),
    )
    return SyncSettings(
        listen_addr=f"127.0.0.1:{port}",
        database_url=database_url,
        auth=AUTH,
        google=google,
        token_encryption_keys=(TOKEN_KEY,),
    )


@pytest.fixture
async def system(pg_url: str, spans: InMemorySpanExporter) -> AsyncIterator[System]:
    emulator = EmulatorServer(seed=7, accounts=6, locations_per_account=2, reviews_per_location=5)
    await emulator.start()
    queue_app = QueueApp(
        QueueSettings(
            listen_addr="127.0.0.1:0",
            database_url=pg_url,
            auth=AUTH,
            retry_delay_base=timedelta(milliseconds=200),
            default_lease=timedelta(seconds=5),
            reaper_interval=timedelta(milliseconds=200),
            pick_fallback_interval=timedelta(milliseconds=200),
        )
    )
    queue_port = await queue_app.start()
    queue_addr = f"127.0.0.1:{queue_port}"
    sync_port = free_port()
    settings = sync_settings(pg_url, emulator.url, sync_port)
    worker_credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)
    owner_token = issue_token(TEST_JWT_SECRET, user_id=OWNER, role="authenticated")
    running = System(
        database_url=pg_url,
        emulator=emulator,
        queue_app=queue_app,
        queue_addr=queue_addr,
        sync_settings=settings,
        sync_port=sync_port,
        sync_app=None,
        queue=QueueClient.connect(queue_addr, worker_credentials),
        sync=SyncClient.connect(f"127.0.0.1:{sync_port}", worker_credentials),
        user_queue=QueueClient.connect(queue_addr, Credentials.bearer(owner_token)),
    )
    await running.start_sync()
    try:
        yield running
    finally:
        for process in running.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            await wait_process(process)
        await running.stop_workers()
        for client in (running.queue, running.sync, running.user_queue):
            await client.close()
        await running.stop_sync()
        await running.queue_app.stop(grace=0.5)
        await emulator.stop()
