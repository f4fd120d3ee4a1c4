"""The server's life: health that follows the database, graceful SIGTERM, refusing bad settings.

Real processes (`python -m queue_service`) and a real PostgreSQL database taken away mid-run.
Every wait is a bounded poll for a condition, never a timing assertion.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import migrations
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service.app import QueueApp
from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET, WORKER_METADATA
from tests.queue.conftest import queue_settings
from tests.queue.helpers import (
    drop_postgres_database,
    eventually,
    free_port,
    health_status,
    rpc_error,
    scratch_postgres_database,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
QUEUE_SERVICE = "gmbsync.queue.v1.QueueService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- health follows the database ----------------------------------------------------------------


@pytest.mark.parametrize("service", ["", QUEUE_SERVICE])
async def test_health_says_serving_for_the_server_and_the_queue_service(pg_queue, service):
    assert await health_status(pg_queue.address, service) == SERVING


async def test_health_of_an_unknown_service_is_not_found(pg_queue):
    stub = health_pb2_grpc.HealthStub(pg_queue.channel)

    err = await rpc_error(stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))

    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def doomed_queue(auth_settings) -> AsyncIterator[tuple[str, str]]:
    """(address, database url) of a QueueApp on a PostgreSQL database of its own, probing its
    health every 0.2 s."""
    with scratch_postgres_database("gmbsync_doomed") as url:
        migrations.upgrade(url)
        app = QueueApp(queue_settings(url, auth_settings))
        app.server.health_probe_interval = 0.2
        port = await app.start()
        try:
            yield f"127.0.0.1:{port}", url
        finally:
            await app.stop(grace=1)


async def test_losing_the_database_turns_health_not_serving_and_rpcs_unavailable(doomed_queue):
    address, url = doomed_queue
    assert await health_status(address) == SERVING
    assert await health_status(address, QUEUE_SERVICE) == SERVING

    drop_postgres_database(url)

    async def not_serving() -> bool:
        return await health_status(address) == NOT_SERVING

    await eventually(not_serving, timeout=30)
    assert await health_status(address, QUEUE_SERVICE) == NOT_SERVING
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QueueServiceStub(channel)
        err = await rpc_error(
            stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=WORKER_METADATA, timeout=60)
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())


# -- python -m queue_service --------------------------------------------------------------------


def server_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "QUEUE_", "DATABASE_"))
    }
    env.update(
        {
            "JWT_SECRET": TEST_JWT_SECRET,
            "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
            "OTEL_TRACES_EXPORTER": "none",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


async def test_sigterm_drains_an_in_flight_long_poll_and_exits_zero(sqlite_url, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "queue_service.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "queue_service",
            cwd=REPO_ROOT,
            env=server_env(QUEUE_LISTEN_ADDR=address, DATABASE_URL=sqlite_url, GRACE_PERIOD="30s"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        async def serving() -> bool:
            assert process.returncode is None, log_path.read_text()
            return await health_status(address) == SERVING

        await eventually(serving, timeout=60, interval=0.2)

        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QueueServiceStub(channel)
            pick = stub.PickJobs(
                pb.PickJobsRequest(worker_id="draining-worker", wait=seconds(5)),
                metadata=WORKER_METADATA,
                timeout=60,
            )
            # A call answered on the same connection after the pick was sent proves the server
            # has accepted the pick: it is in flight when the signal arrives.
            checked = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert checked.status == SERVING
            assert not pick.done(), "precondition: the 5 s long-poll is still waiting"

            process.send_signal(signal.SIGTERM)
            response = await pick

        assert list(response.jobs) == []
        exit_code = await asyncio.wait_for(process.wait(), timeout=60)
        assert exit_code == 0, log_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_bad_setting_exits_2_with_one_line_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "queue_service"],
        cwd=REPO_ROOT,
        env=server_env(
            QUEUE_LISTEN_ADDR=f"127.0.0.1:{free_port()}",
            DATABASE_URL=f"sqlite:///{tmp_path / 'never.db'}",
            RETRY_DELAY_BASE="banana",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RETRY_DELAY_BASE" in lines[0]
    assert "Traceback" not in result.stderr
