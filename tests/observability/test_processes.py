"""Metrics endpoints of real processes: `python -m queue_service` with two copies (each on its
own port, the leader alone exporting the queue's state) and `python -m clients.worker`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET
from tests.observability.conftest import Samples, scrape, value
from tests.observability.test_endpoints import two_free_ports_in_a_row
from tests.queue.helpers import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "QUEUE_", "WORKER_"))}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env={**base, "PYTHONUNBUFFERED": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def output(log: Path) -> str:
    """What the process wrote (read only when a test fails)."""
    return log.read_text()


async def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(asyncio.to_thread(process.wait), 60)
    assert code == 0, output(log)


async def scraped(port: int, process: subprocess.Popen[bytes], log: Path) -> Samples:
    """The endpoint's samples once it answers (the process may still be starting)."""
    found: list[Samples] = []

    async def answers() -> bool:
        assert process.poll() is None, output(log)
        try:
            found.append(await scrape(port))
        except httpx.HTTPError:
            return False
        return True

    await eventually(answers, timeout=60)
    return found[-1]


async def test_each_copy_of_the_queue_serves_metrics_and_one_exports_the_state(
    pg_url: str, tmp_path: Path
) -> None:
    metrics_port = two_free_ports_in_a_row()
    log = tmp_path / "queue.log"
    process = spawn(
        "queue_service",
        {
            "DATABASE_URL": pg_url,
            "QUEUE_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
            "QUEUE_PROCESSES": "2",
            "QUEUE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "QUEUE_METRICS_REFRESH": "200ms",
            "REAPER_INTERVAL": "200ms",
            "SCHEDULER_ENABLED": "false",
            "JWT_SECRET": TEST_JWT_SECRET,
            "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
            "GRACE_PERIOD": "2s",
        },
        log,
    )
    try:
        await scraped(metrics_port, process, log)
        await scraped(metrics_port + 1, process, log)

        async def one_leader_exports() -> bool:
            exporting = [
                value(await scrape(port), "gmbsync_queue_state_read_timestamp_seconds") > 0
                for port in (metrics_port, metrics_port + 1)
            ]
            return sorted(exporting) == [False, True]

        await eventually(one_leader_exports, timeout=60)
    finally:
        await stop(process, log)


async def test_the_worker_serves_its_metrics(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    process = spawn(
        "clients.worker",
        {
            # Nothing listens there: the worker keeps trying to start its run meanwhile.
            "QUEUE_ADDR": f"127.0.0.1:{free_port()}",
            "SYNC_ADDR": f"127.0.0.1:{free_port()}",
            "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
            "WORKER_CONCURRENCY": "3",
            "WORKER_METRICS_ADDR": f"127.0.0.1:{port}",
        },
        log,
    )
    try:
        samples = await scraped(port, process, log)
        assert value(samples, "gmbsync_worker_concurrency") == 3
        assert value(samples, "gmbsync_worker_jobs_in_flight") == 0
        assert value(samples, "gmbsync_worker_circuit_breaker_state", state="closed") == 1
        assert value(samples, "gmbsync_worker_circuit_breaker_state", state="open") == 0
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(process.wait), 60)
