"""CPU per call of QueueService's request path, measured on a real `python -m queue_service`.

    .venv/bin/python -m scripts.runtime_load [--calls 3000] [--inflight 16] [--processes 1]
        [--server-root DIR] [--profile DIR] [--env NAME=VALUE ...]

QueueService runs as its own process(es) on a scratch PostgreSQL database; this process drives
three phases, each with `--inflight` calls in flight: EnqueueSync (as a user with a bearer JWT,
one account per call), GetJob (the same user, the jobs just enqueued) and PickJobs(max 1) +
CompleteJob (as a worker). For each phase it prints the CPU time the server's processes (and
the PostgreSQL backends serving them) spent per call, read from /proc, and calls per second.
CPU per call is what to compare between versions: it is far less sensitive than wall time to
what else the machine runs. `--server-root` runs another checkout's server (a "before"); with
`--profile DIR`, py-spy records each phase of the server to DIR/<phase>.txt (collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from migrations.scratch import scratch_database
from service_runtime.auth import issue_token
from sync_service.tables import gmb_accounts

ROOT = Path(__file__).resolve().parents[1]
TRIGGER_SECRET = "load-trigger-secret"
JWT_SECRET = "load-jwt-secret-load-jwt-secret-load!"
WORKER = (("x-trigger-secret", TRIGGER_SECRET),)
TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (a QUEUE_PROCESSES supervisor's children)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            pids.extend(_tree(int(child)))
    return pids


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each process that still exists."""
    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings; a process that began in between counts from zero."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def _backend_pids(url: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
            return [r[0] for r in rows]
    finally:
        engine.dispose()


def seed_accounts(url: str, count: int, owner: uuid.UUID) -> list[str]:
    engine = sa.create_engine(url)
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(gmb_accounts),
            [
                {
                    "id": i,
                    "user_id": owner,
                    "account_name": f"Load {n}",
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


@contextmanager
def server(url: str, root: Path, processes: int, extra_env: dict[str, str]) -> Iterator[Any]:
    address = f"127.0.0.1:{_free_port()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "QUEUE_"))},
        "PYTHONPATH": str(root),
        "QUEUE_LISTEN_ADDR": address,
        "DATABASE_URL": url,
        "TRIGGER_SECRET": TRIGGER_SECRET,
        "JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "WARNING",
        "OTEL_TRACES_EXPORTER": "none",
        "SCHEDULER_ENABLED": "false",
        "QUEUE_PROCESSES": str(processes),
        **extra_env,
    }
    process = subprocess.Popen([sys.executable, "-m", "queue_service"], cwd=root, env=env)
    try:
        yield process, address
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


async def wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("queue_service did not become healthy")


async def run_calls(count: int, inflight: int, call: Callable[[int], Awaitable[None]]) -> float:
    next_index = 0

    async def sender() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await call(index)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(inflight)))
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    owner = uuid.uuid4()
    user = (
        ("authorization", f"Bearer {issue_token(JWT_SECRET, user_id=owner, role='authenticated')}"),
    )
    extra_env = dict(item.split("=", 1) for item in args.env)
    with scratch_database("gmbsync_load") as url:
        accounts = seed_accounts(url, args.calls, owner)
        root = args.server_root
        with server(url, root, args.processes, extra_env) as (process, address):
            await wait_serving(address)
            # A few channels, as several clients would use; calls spread over them.
            channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
            stubs = [pb_grpc.QueueServiceStub(c) for c in channels]
            job_ids: list[str] = [""] * args.calls

            async def enqueue(i: int) -> None:
                reply = await stubs[i % 4].EnqueueSync(
                    pb.EnqueueSyncRequest(account_id=accounts[i], sync_type=pb.SYNC_TYPE_FULL),
                    metadata=user,
                )
                job_ids[i] = reply.job.id

            async def get_job(i: int) -> None:
                await stubs[i % 4].GetJob(pb.GetJobRequest(job_id=job_ids[i]), metadata=user)

            async def pick_complete(i: int) -> None:
                stub = stubs[i % 4]
                reply = await stub.PickJobs(
                    pb.PickJobsRequest(max_jobs=1, worker_id=f"load-{i % 16}"), metadata=WORKER
                )
                (job,) = reply.jobs
                await stub.CompleteJob(
                    pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token),
                    metadata=WORKER,
                )

            # Warm up: connections in the pool, code paths compiled, caches filled.
            await run_calls(16, 16, get_job_warmup(stubs, user))
            print(f"server: {root} processes={args.processes} calls={args.calls}")
            print(f"{'phase':<24}{'server µs/call':>16}{'postgres µs/call':>18}{'calls/s':>10}")
            for name, call in (
                ("EnqueueSync", enqueue),
                ("GetJob", get_job),
                ("PickJobs(1)+CompleteJob", pick_complete),
            ):
                pids = _tree(process.pid)
                backends = _backend_pids(url)
                spy = start_profiler(args.profile, name, process.pid) if args.profile else None
                if spy is not None:
                    await asyncio.sleep(1.0)  # py-spy attaches before the phase starts
                server_before = _cpu_seconds(pids)
                pg_before = _cpu_seconds(backends)
                elapsed = await run_calls(args.calls, args.inflight, call)
                server_cpu = _spent(server_before, _cpu_seconds(_tree(process.pid)))
                pg_cpu = _spent(pg_before, _cpu_seconds(_backend_pids(url)))
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                print(
                    f"{name:<24}{server_cpu / args.calls * 1e6:>16,.0f}"
                    f"{pg_cpu / args.calls * 1e6:>18,.0f}{args.calls / elapsed:>10,.0f}"
                )
            for channel in channels:
                await channel.close()


def start_profiler(directory: str, phase: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` and its children, collapsed stacks in DIR/<phase>.txt."""
    out = Path(directory) / f"{phase.split('(')[0]}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--format", "raw", "--rate", "250", "--subprocesses"]
    return subprocess.Popen(  # noqa: S603  (our own py-spy and arguments)
        [*command, "-o", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def get_job_warmup(stubs: list[Any], user: Any) -> Callable[[int], Awaitable[None]]:
    async def call(i: int) -> None:
        try:
            await stubs[i % 4].GetJob(pb.GetJobRequest(job_id=str(uuid.uuid4())), metadata=user)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    return call


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m scripts.runtime_load", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--server-root", default=str(ROOT))
    parser.add_argument("--profile", default="")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    arguments = parser.parse_args()
    arguments.server_root = Path(arguments.server_root).resolve()
    asyncio.run(main(arguments))
