"""CPU per call of QueueService's request path, measured on a real `python -m queue_service`.

    .venv/bin/python -m scripts.runtime_load [--calls 2000] [--rounds 3] [--inflight 16]
        [--processes 1] [--compare DIR] [--profile DIR] [--env NAME=VALUE ...]

QueueService runs as its own process(es) on a scratch PostgreSQL database; this process drives
three phases, each with `--inflight` calls in flight: EnqueueSync (as a user with a bearer JWT,
one account per call), GetJob (the same user, the jobs just enqueued) and PickJobs(max 1) +
CompleteJob (as a worker). For each phase it prints the CPU time the server's processes (and
the PostgreSQL backends serving them) spent per call, read from /proc, and calls per second:
the median over `--rounds` rounds. CPU per call is what to compare between versions: it is far
less sensitive than wall time to what else the machine runs.

`--compare DIR` also runs the server of another checkout (a "before") on a database of its own
and alternates the two round by round and phase by phase, so both see the same machine load.
With `--profile DIR`, py-spy records each phase of the last round to DIR/<server>-<phase>.txt
(collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2

from clients.healthcheck import health_check_rpc
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
PHASES = ("EnqueueSync", "GetJob", "PickJobs(1)+CompleteJob")


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
def server_process(
    url: str, root: Path, processes: int, extra_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
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
        check = health_check_rpc(channel)
        for _ in range(300):
            try:
                reply = await check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{address} did not become healthy")


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


@dataclass
class Target:
    """One server under load, its database, and what its phases measured."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    address: str
    accounts: list[str]
    user: tuple[tuple[str, str], ...]
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    # phase -> [(server µs/call, postgres µs/call, calls/s)] per round
    figures: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A few channels, as several clients would use; calls spread over them.
        self.channels = [grpc.aio.insecure_channel(self.address) for _ in range(4)]
        self.stubs = [pb_grpc.QueueServiceStub(c) for c in self.channels]

    def phase_call(self, phase: str, offset: int) -> Callable[[int], Awaitable[None]]:
        stubs, user = self.stubs, self.user

        async def enqueue(i: int) -> None:
            reply = await stubs[i % 4].EnqueueSync(
                pb.EnqueueSyncRequest(
                    account_id=self.accounts[offset + i], sync_type=pb.SYNC_TYPE_FULL
                ),
                metadata=user,
            )
            self.job_ids[i] = reply.job.id

        async def get_job(i: int) -> None:
            await stubs[i % 4].GetJob(pb.GetJobRequest(job_id=self.job_ids[i]), metadata=user)

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

        return {PHASES[0]: enqueue, PHASES[1]: get_job, PHASES[2]: pick_complete}[phase]

    async def warm_up(self) -> None:
        async def call(i: int) -> None:
            try:
                await self.stubs[i % 4].GetJob(
                    pb.GetJobRequest(job_id=str(uuid.uuid4())), metadata=self.user
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await run_calls(64, 16, call)

    async def measure(
        self, phase: str, calls: int, inflight: int, offset: int, profile: Path | None
    ) -> None:
        if phase == PHASES[0]:
            self.job_ids = [""] * calls
        pids = _tree(self.process.pid)
        backends = _backend_pids(self.url)
        spy = start_profiler(profile, f"{self.name}-{phase}", self.process.pid) if profile else None
        if spy is not None:
            await asyncio.sleep(1.0)  # py-spy attaches before the phase starts
        server_before, pg_before = _cpu_seconds(pids), _cpu_seconds(backends)
        elapsed = await run_calls(calls, inflight, self.phase_call(phase, offset))
        server_cpu = _spent(server_before, _cpu_seconds(_tree(self.process.pid)))
        pg_cpu = _spent(pg_before, _cpu_seconds(_backend_pids(self.url)))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        self.figures.setdefault(phase, []).append(
            (server_cpu / calls * 1e6, pg_cpu / calls * 1e6, calls / elapsed)
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def start_profiler(directory: Path, name: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` and its children, collapsed stacks in DIR/<name>.txt."""
    out = directory / f"{name.split('(')[0]}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--format", "raw", "--rate", "250", "--subprocesses"]
    return subprocess.Popen(  # noqa: S603  (our own py-spy and arguments)
        [*command, "-o", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def report(targets: list[Target], args: argparse.Namespace) -> None:
    print(
        f"calls per phase {args.calls}, {args.inflight} in flight, medians of {args.rounds} "
        f"rounds, QUEUE_PROCESSES={args.processes}"
    )
    print(
        f"{'phase':<25}{'server':<8}{'server µs/call':>15}{'postgres µs/call':>18}{'calls/s':>9}"
        f"{'  server µs/call of each round'}"
    )
    for phase in PHASES:
        for target in targets:
            rounds = target.figures[phase]
            server, pg, rate = (statistics.median(column) for column in zip(*rounds, strict=True))
            each = " ".join(f"{r[0]:,.0f}" for r in rounds)
            print(f"{phase:<25}{target.name:<8}{server:>15,.0f}{pg:>18,.0f}{rate:>9,.0f}  {each}")


async def main(args: argparse.Namespace) -> None:
    owner = uuid.uuid4()
    token = issue_token(JWT_SECRET, user_id=owner, role="authenticated", ttl_seconds=86_400)
    user = (("authorization", f"Bearer {token}"),)
    extra_env = dict(item.split("=", 1) for item in args.env)
    roots = [("after", ROOT)] + ([("before", args.compare)] if args.compare else [])
    targets: list[Target] = []
    with ExitStack() as stack:
        for name, root in roots:
            url = stack.enter_context(scratch_database(f"gmbsync_load_{name}"))
            accounts = seed_accounts(url, args.calls * args.rounds, owner)
            process, address = stack.enter_context(
                server_process(url, root, args.processes, extra_env)
            )
            targets.append(Target(name, url, process, address, accounts, user))
        try:
            for target in targets:
                await wait_serving(target.address)
                await target.warm_up()
            for round_number in range(args.rounds):
                last = round_number == args.rounds - 1
                profile = args.profile if last else None
                # Alternate who goes first, so neither always runs right after the other.
                order = targets if round_number % 2 == 0 else targets[::-1]
                for phase in PHASES:
                    for target in order:
                        await target.measure(
                            phase, args.calls, args.inflight, round_number * args.calls, profile
                        )
        finally:
            for target in targets:
                await target.close()
    report(targets, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m scripts.runtime_load", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--compare", default="", help="another checkout's root: a 'before'")
    parser.add_argument("--profile", default="", help="directory for py-spy's collapsed stacks")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    arguments = parser.parse_args()
    arguments.compare = Path(arguments.compare).resolve() if arguments.compare else None
    arguments.profile = Path(arguments.profile).resolve() if arguments.profile else None
    asyncio.run(main(arguments))
