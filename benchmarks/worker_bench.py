"""How fast the real worker drains the queue when SyncService costs nothing.

`python -m benchmarks.worker_bench [--jobs N] [--concurrency C] [--json]`

QueueService runs as its own process on a scratch PostgreSQL database, as in production; a
SyncService stand-in that answers every SyncAccount at once runs as another process; the
worker (`clients.worker.Worker`, the code `python -m clients.worker` runs, tracing configured
as there) runs in this process. N jobs are enqueued in batches, then the worker is started and
timed until it has seen every job succeed. The figures are the drain rate and the RPCs the
worker made per job, counted by a client interceptor on its QueueService channel.

This measures the worker's own cost and the queue's, not a sync's: a real sync takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import sqlalchemy as sa

from clients.channel import Credentials
from clients.queue import QueueClient
from clients.worker import Worker, WorkerConfig
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from gmbsync.sync.v1 import sync_service_pb2 as sync_pb
from migrations.scratch import scratch_database
from scripts.runtime_load import wait_serving
from sync_service.tables import gmb_accounts

TRIGGER_SECRET = "bench-trigger-secret"
# The processes of a run, printed to stderr before the drain so that a profiler can attach.
_PIDS: dict[str, int] = {}
WORKER = (("x-trigger-secret", TRIGGER_SECRET),)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def instant_sync(
    request: sync_pb.SyncAccountRequest, _context: grpc.aio.ServicerContext[Any, Any]
) -> sync_pb.SyncAccountResponse:
    """Answers every SyncAccount at once with a success."""
    return sync_pb.SyncAccountResponse(
        account_id=request.account_id, sync_type=request.sync_type, locations_synced=1
    )


async def serve_instant_sync(port: int) -> None:
    """A SyncService that serves only SyncAccount, answering at once."""
    server = grpc.aio.server()
    sync_account = grpc.unary_unary_rpc_method_handler(
        instant_sync,
        request_deserializer=sync_pb.SyncAccountRequest.FromString,
        response_serializer=sync_pb.SyncAccountResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "gmbsync.sync.v1.SyncService", {"SyncAccount": sync_account}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@asynccontextmanager
async def _process(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(sys.executable, *args, env=env)
    try:
        yield process.pid
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


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
        "SCHEDULER_ENABLED": "false",
    }
    async with _process("-m", "queue_service", env=env) as pid:
        address = f"127.0.0.1:{port}"
        await wait_serving(address)
        _PIDS["queue"] = pid
        yield address


@asynccontextmanager
async def instant_sync_process() -> AsyncIterator[str]:
    port = _free_port()
    async with _process("-m", "benchmarks.worker_bench", "--serve-instant-sync", str(port)) as pid:
        _PIDS["sync"] = pid
        address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
        yield address


def seed_accounts(database_url: str, count: int) -> list[str]:
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


async def enqueue_all(address: str, accounts: Sequence[str]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QueueServiceStub(channel)
        for start in range(0, len(accounts), 1000):
            await stub.EnqueueSyncBatch(
                pb.EnqueueSyncBatchRequest(
                    items=[
                        pb.EnqueueSyncRequest(account_id=a, sync_type=pb.SYNC_TYPE_INCREMENTAL)
                        for a in accounts[start : start + 1000]
                    ]
                ),
                metadata=WORKER,
            )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), or 0.0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CountingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the worker's QueueService calls by method."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        self.calls[name.rsplit("/", 1)[-1]] += 1
        return await continuation(client_call_details, request)


async def drain(
    queue_addr: str, sync_addr: str, total: int, concurrency: int, **overrides: Any
) -> dict[str, Any]:
    counter = _CountingInterceptor()
    channel = grpc.aio.insecure_channel(queue_addr, interceptors=[counter])
    queue = QueueClient(channel, Credentials.trigger_secret(TRIGGER_SECRET), owns_channel=True)
    config = WorkerConfig(
        trigger_secret=TRIGGER_SECRET,
        queue_addr=queue_addr,
        sync_addr=sync_addr,
        worker_id="bench-worker",
        concurrency=concurrency,
        poll_wait=timedelta(seconds=1),
        **overrides,
    )
    worker = Worker(config, queue=queue)
    pids = {"worker": os.getpid(), **_PIDS}
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    run = asyncio.create_task(worker.run())
    while worker.outcomes["succeeded"] < total:
        if run.done():
            raise RuntimeError(f"the worker stopped early: {run.result().as_dict()}")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    worker.request_stop("drained")
    summary = await run
    await queue.close()
    if summary.run is None or summary.run.jobs_succeeded != total:
        raise RuntimeError(f"the run's counts are off: {summary.as_dict()}")
    calls = dict(sorted(counter.calls.items()))
    return {
        "jobs_per_s": total / elapsed,
        # CPU per job of each process: steadier than the rate on a shared machine.
        **{f"{name}_cpu_us_per_job": seconds / total * 1e6 for name, seconds in cpu.items()},
        "queue_rpcs_per_job": sum(calls.values()) / total,
        "queue_rpcs": calls,
    }


async def run_worker_benchmark(
    *, jobs: int = 5_000, concurrency: int = 64, **overrides: Any
) -> dict[str, Any]:
    from service_runtime.telemetry import configure_tracing

    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    configure_tracing("gmbsync-worker-bench")
    with scratch_database("gmbsync_worker_bench") as url:
        accounts = seed_accounts(url, jobs)
        async with queue_process(url) as queue_addr, instant_sync_process() as sync_addr:
            await enqueue_all(queue_addr, accounts)
            print(f"draining: pids {_PIDS | {'worker': os.getpid()}}", file=sys.stderr, flush=True)
            figures = await drain(queue_addr, sync_addr, jobs, concurrency, **overrides)
    return {"jobs": jobs, "concurrency": concurrency, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-instant-sync", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_instant_sync:
        asyncio.run(serve_instant_sync(args.serve_instant_sync))
        return 0
    figures = asyncio.run(run_worker_benchmark(jobs=args.jobs, concurrency=args.concurrency))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:<24} {value:,.1f}" if isinstance(value, float) else f"{name:<24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
