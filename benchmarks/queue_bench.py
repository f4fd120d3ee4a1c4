"""QueueService throughput and wake-up latency on PostgreSQL, over real gRPC.

QueueService runs as its own process (`python -m queue_service`), as in production, on a scratch
database; this process is the client. Figures:
- enqueue jobs/s, one EnqueueSync per job (16 in flight) and EnqueueSyncBatch (1000 per call);
- pick+complete jobs/s with 4 concurrent pickers (PickJobs max 10 + ReportResults), and with
  one job per PickJobs + CompleteJob;
- enqueue-to-pick latency with a picker already waiting in PickJobs (p50 and p95).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from migrations.scratch import scratch_database
from sync_service.tables import gmb_accounts

TRIGGER_SECRET = "bench-trigger-secret"
WORKER = (("x-trigger-secret", TRIGGER_SECRET),)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def queue_process(database_url: str) -> AsyncIterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "QUEUE_LISTEN_ADDR": f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        "TRIGGER_SECRET": TRIGGER_SECRET,
        "JWT_SECRET": "bench-jwt-secret-bench-jwt-secret!",
        "LOG_LEVEL": "WARNING",
        "OTEL_TRACES_EXPORTER": "none",
        # The benchmark owns every job in the queue: no periodic syncs.
        "SCHEDULER_ENABLED": "false",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "queue_service", env=env)
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("queue_service did not become healthy")
        yield address
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


async def seed_accounts(database_url: str, count: int) -> list[str]:
    engine = sa.create_engine(database_url)
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(gmb_accounts),
            [
                {
                    "id": i,
                    "user_id": uuid.uuid4(),
                    "account_name": f"Bench {n}",
                    "google_account_id": f"accounts/{n + 1}",
                    "is_active": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for n, i in enumerate(ids)
            ],
        )
    engine.dispose()
    return [str(i) for i in ids]


def clear_jobs(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE sync_queue"))
    engine.dispose()


async def enqueue_single(stub: pb_grpc.QueueServiceStub, accounts: Sequence[str]) -> float:
    pending = list(accounts)

    async def sender() -> None:
        while pending:
            account = pending.pop()
            await stub.EnqueueSync(
                pb.EnqueueSyncRequest(account_id=account, sync_type=pb.SYNC_TYPE_FULL),
                metadata=WORKER,
            )

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(16)))
    return len(accounts) / (time.perf_counter() - started)


async def enqueue_batches(stub: pb_grpc.QueueServiceStub, accounts: Sequence[str]) -> float:
    started = time.perf_counter()
    for start in range(0, len(accounts), 1000):
        await stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(
                items=[
                    pb.EnqueueSyncRequest(account_id=a, sync_type=pb.SYNC_TYPE_FULL)
                    for a in accounts[start : start + 1000]
                ]
            ),
            metadata=WORKER,
        )
    return len(accounts) / (time.perf_counter() - started)


async def drain(address: str, total: int, *, pickers: int, batch: int) -> float:
    done = 0

    async def picker(number: int) -> None:
        nonlocal done
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QueueServiceStub(channel)
            while True:
                response = await stub.PickJobs(
                    pb.PickJobsRequest(max_jobs=batch, worker_id=f"bench-{number}"),
                    metadata=WORKER,
                )
                if not response.jobs:
                    return
                if batch == 1:
                    job = response.jobs[0]
                    await stub.CompleteJob(
                        pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token),
                        metadata=WORKER,
                    )
                else:
                    await stub.ReportResults(
                        pb.ReportResultsRequest(
                            results=[
                                pb.JobResult(
                                    complete=pb.CompleteJobRequest(
                                        job_id=j.id, lease_token=j.lease_token
                                    )
                                )
                                for j in response.jobs
                            ]
                        ),
                        metadata=WORKER,
                    )
                done += len(response.jobs)

    started = time.perf_counter()
    await asyncio.gather(*(picker(n) for n in range(pickers)))
    elapsed = time.perf_counter() - started
    if done != total:
        raise RuntimeError(f"drained {done} jobs, expected {total}")
    return total / elapsed


async def wake_latency(stub: pb_grpc.QueueServiceStub, accounts: Sequence[str]) -> list[float]:
    wait = duration_pb2.Duration()
    wait.FromTimedelta(timedelta(seconds=20))
    samples: list[float] = []
    for account in accounts:
        picker = asyncio.ensure_future(
            stub.PickJobs(pb.PickJobsRequest(worker_id="latency", wait=wait), metadata=WORKER)
        )
        await asyncio.sleep(0.05)  # let the picker reach its wait
        started = time.perf_counter()
        await stub.EnqueueSync(
            pb.EnqueueSyncRequest(account_id=account, sync_type=pb.SYNC_TYPE_FULL), metadata=WORKER
        )
        response = await picker
        samples.append(time.perf_counter() - started)
        job = response.jobs[0]
        await stub.CompleteJob(
            pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token), metadata=WORKER
        )
    return samples


async def run_queue_benchmark(*, jobs: int = 10_000, single: int = 2_000) -> dict[str, Any]:
    with scratch_database("gmbsync_bench") as url:
        accounts = await seed_accounts(url, jobs)
        async with queue_process(url) as address, grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QueueServiceStub(channel)
            results: dict[str, Any] = {}
            results["enqueue_single_jobs_per_s"] = await enqueue_single(stub, accounts[:single])
            clear_jobs(url)
            results["enqueue_batch_jobs_per_s"] = await enqueue_batches(stub, accounts)
            results["pick_complete_4_pickers_batch10_jobs_per_s"] = await drain(
                address, jobs, pickers=4, batch=10
            )
            clear_jobs(url)
            await enqueue_batches(stub, accounts[:single])
            results["pick_complete_4_pickers_single_jobs_per_s"] = await drain(
                address, single, pickers=4, batch=1
            )
            clear_jobs(url)
            latencies = await wake_latency(stub, accounts[:100])
            results["enqueue_to_pick_latency_ms_p50"] = statistics.median(latencies) * 1000
            results["enqueue_to_pick_latency_ms_p95"] = (
                statistics.quantiles(latencies, n=20)[-1] * 1000
            )
            results["jobs"] = jobs
    return results
