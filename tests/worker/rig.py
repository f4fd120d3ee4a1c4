"""A worker under test against a real QueueService on PostgreSQL and a scripted SyncService.

The worker runs in-process; its QueueService channel counts every call it makes (a client
interceptor), and the SyncService on a loopback port answers SyncAccount with a success, at once
or when the test lets it. The `rig` fixture (conftest.py) starts both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest

from clients import Credentials, QueueClient, SyncClient
from clients.worker import Worker, WorkerConfig
from clients.worker.runner import RunSummary
from gmbsync.sync.v1 import sync_service_pb2 as sync_pb
from gmbsync.sync.v1 import sync_service_pb2_grpc as sync_grpc
from tests.conftest import TEST_TRIGGER_SECRET
from tests.queue.conftest import RunningQueue
from tests.queue.helpers import job_row, run_counts_of

WAIT = 30.0


@dataclass
class InstantSync(sync_grpc.SyncServiceServicer):
    """Answers every SyncAccount with a success; while `gate` is clear, holds the answers of
    every call but the first `ungated` ones."""

    calls: list[str] = field(default_factory=list)
    # Each call's job and attempt: one attempt is one lease.
    attempts: list[tuple[str, int]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    ungated: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def SyncAccount(self, request, context):
        self.calls.append(request.job_id)
        self.attempts.append((request.job_id, request.attempt))
        if len(self.calls) > self.ungated:
            await asyncio.wait_for(self.gate.wait(), WAIT)
        return sync_pb.SyncAccountResponse(
            account_id=request.account_id, sync_type=request.sync_type, locations_synced=1
        )


class CountingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the calls of a channel by method; `lose_answers` drops the answers of that many
    ReportResults calls after QueueService has carried them out (an answer lost on the way)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.lose_answers = 0

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        self.calls[name] += 1
        call = await continuation(client_call_details, request)
        if name == "ReportResults" and self.lose_answers > 0:
            await call  # carried out by QueueService...
            self.lose_answers -= 1
            raise grpc.aio.AioRpcError(  # ...but the answer never arrives
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection reset before the answer arrived",
            )
        return call


@dataclass
class Rig:
    queue: RunningQueue
    sync: InstantSync
    sync_addr: str
    counter: CountingInterceptor = field(default_factory=CountingInterceptor)
    # Workers started with `start`, stopped at teardown if a test ends without stopping them.
    started: list[tuple[Worker, asyncio.Task[RunSummary]]] = field(default_factory=list)

    def start(self, worker: Worker) -> asyncio.Task[RunSummary]:
        task = asyncio.create_task(worker.run())
        self.started.append((worker, task))
        return task

    async def stop_workers(self) -> None:
        """Stops what a failed test left running: no grace, syncs let go."""
        self.sync.gate.set()
        for worker, task in self.started:
            if not task.done():
                worker.request_stop("test teardown")
                worker.request_stop("test teardown")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT)
            await worker.sync.close()

    def worker(self, **overrides: Any) -> Worker:
        values: dict[str, Any] = {
            "trigger_secret": TEST_TRIGGER_SECRET,
            "queue_addr": self.queue.address,
            "sync_addr": self.sync_addr,
            "worker_id": f"batch-worker-{uuid.uuid4().hex[:6]}",
            "concurrency": 8,
            "job_timeout": timedelta(seconds=20),
            "lease_duration": timedelta(seconds=30),
            "poll_wait": timedelta(milliseconds=200),
            "shutdown_grace": timedelta(seconds=20),
        }
        values.update(overrides)
        credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)
        channel = grpc.aio.insecure_channel(self.queue.address, interceptors=[self.counter])
        return Worker(
            WorkerConfig(**values),
            queue=QueueClient(channel, credentials, owns_channel=True),
            sync=SyncClient.connect(values["sync_addr"], credentials),
        )

    async def enqueue(self, count: int, **fields: Any) -> list[str]:
        return [
            (await self.queue.enqueue(await self.queue.add_account(), **fields)).id
            for _ in range(count)
        ]

    async def job(self, job_id: str) -> dict[str, Any]:
        return await job_row(self.queue.app.engine, job_id)


async def until(probe: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Polls a condition of in-process state (bounded; fails naming what never happened)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run_until(worker: Worker, done: Callable[[], bool], what: str) -> RunSummary:
    """Runs a continuous worker until `done`, then stops it as SIGTERM does; its summary."""
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: done() or task.done(), what)
    finally:
        if not task.done():
            worker.request_stop("test finished")
    summary = await asyncio.wait_for(task, WAIT)
    await worker.sync.close()
    return summary


def run_counts(summary: RunSummary) -> tuple[int, int, int, int, int]:
    assert summary.run is not None, summary.error
    return run_counts_of(summary.run)
