"""Figure 4: enqueueing. One EnqueueSync at a time from one client (4a), 16 in flight (4b),
EnqueueSyncBatch of 1,000 (4c, full jobs in the reply, then JOB_VIEW_ID), each against the raw
enqueue statement on the same number of connections; and many users at once, each with their
own JWT and connection (4d), with its latency and QueueService's CPU per call.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from benchmarks.harness import progress
from benchmarks.queue_bench import QueueBench, cpu_text
from benchmarks.rawsql import RawFigure, percentiles_ms
from benchmarks.report import Row
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from service_runtime.auth import Role, issue_token


async def _measure(
    bench: QueueBench,
    label: tuple[str, str, str],
    jobs: int,
    raw: RawFigure,
    call: Callable[[], Awaitable[None]],
    *,
    target: str = "",
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    """Times `call` (which enqueues `jobs` jobs) with the CPU of QueueService, PostgreSQL and
    this client; `label` is (figure, JSON key, table name)."""
    figure, key, name = label
    cpu = bench.cpu_window({"queue": bench.queue_pid}, client=True)
    await cpu.start()
    await call()
    await cpu.stop()
    rate = jobs / cpu.wall
    progress(f"{figure}: {rate:,.0f} jobs/s (PostgreSQL alone {raw.rate:,.0f})")
    bench.rows.append(
        Row(
            figure,
            name,
            rate,
            "jobs/s",
            raw.rate,
            target=target,
            cpu=cpu_text(cpu, jobs, "job"),
            note=note,
        )
    )
    bench.figures[f"{figure}_{key}"] = {
        "jobs": jobs,
        "jobs_per_s": round(rate, 1),
        "seconds": round(cpu.wall, 3),
        "raw": raw.as_dict(),
        "cpu_ms_per_job": cpu.per_unit_ms(jobs),
        **(extra or {}),
    }


async def enqueue_figures(bench: QueueBench) -> None:
    """4a, 4b and 4c."""
    sizes, stub, md = bench.sizes, bench.stub, bench.worker_md

    accounts = bench.accounts[: sizes.enqueue_one_at_a_time]
    bench.seed.truncate_jobs()
    raw = await bench.raw.enqueue(accounts, batch=1, connections=1)
    bench.seed.truncate_jobs()
    progress(f"4a: {len(accounts):,} EnqueueSync, one at a time")

    async def one_at_a_time() -> None:
        for account in accounts:
            await stub.EnqueueSync(
                pb.EnqueueSyncRequest(account_id=account, sync_type=pb.SYNC_TYPE_FULL),
                metadata=md,
            )

    floor = await bench.grpc_floor(len(accounts))
    await _measure(
        bench,
        ("4a", "enqueue_one_at_a_time", "enqueue: one EnqueueSync at a time"),
        len(accounts),
        raw,
        one_at_a_time,
        target=">= 1,500 jobs/s",
        note="PostgreSQL alone: one enqueue statement at a time; gRPC alone (the health Check "
        f"of the same server, one at a time, nothing else): {floor:,.0f} calls/s",
        extra={"grpc_health_check_calls_per_s": round(floor, 1)},
    )

    accounts = bench.accounts[: sizes.enqueue_in_flight]
    bench.seed.truncate_jobs()
    raw = bench.raw_16 = await bench.raw.enqueue(accounts, batch=1, connections=16)
    bench.seed.truncate_jobs()
    silent = await bench.raw.enqueue(accounts, batch=1, connections=16, notify=False)
    bench.seed.truncate_jobs()
    progress(f"4b: {len(accounts):,} EnqueueSync, 16 in flight")
    pending = list(accounts)

    async def sender() -> None:
        while pending:
            await stub.EnqueueSync(
                pb.EnqueueSyncRequest(account_id=pending.pop(), sync_type=pb.SYNC_TYPE_FULL),
                metadata=md,
            )

    async def in_flight() -> None:
        await asyncio.gather(*(sender() for _ in range(16)))

    await _measure(
        bench,
        ("4b", "enqueue_16_in_flight", "enqueue: EnqueueSync, 16 in flight"),
        len(accounts),
        raw,
        in_flight,
        note=f"PostgreSQL alone: 16 connections; {silent.rate:,.0f} jobs/s without the "
        "pg_notify, which PostgreSQL serialises at commit",
        extra={"raw_without_notify": silent.as_dict()},
    )

    accounts = bench.accounts[: sizes.enqueue_batched]
    bench.seed.truncate_jobs()
    raw = await bench.raw.enqueue(accounts, batch=1000, connections=1)
    batch_views = (
        ("", "", pb.JOB_VIEW_UNSPECIFIED, "one INSERT ... SELECT of 1,000 per statement"),
        (", JOB_VIEW_ID", "_ids", pb.JOB_VIEW_ID, "the same; each reply's jobs by id only"),
    )
    for suffix, key_suffix, view, note in batch_views:
        bench.seed.truncate_jobs()
        progress(f"4c: {len(accounts):,} jobs by EnqueueSyncBatch of 1,000{suffix}")
        await _measure(
            bench,
            (
                "4c",
                f"enqueue_batch_of_1000{key_suffix}",
                f"enqueue: EnqueueSyncBatch of 1,000{suffix}",
            ),
            len(accounts),
            raw,
            functools.partial(bench.enqueue_batches, accounts, view=view),
            target=">= 40,000 jobs/s",
            note=f"PostgreSQL alone: {note}",
        )


async def many_users_figure(bench: QueueBench) -> None:
    """4d: users calling EnqueueSync at once, each over its own connection with its own JWT,
    for a fixed time; every call enqueues a new job (each user cycles through its accounts)."""
    sizes = bench.sizes
    raw = bench.raw_16
    if raw is None:
        bench.seed.truncate_jobs()
        raw = bench.raw_16 = await bench.raw.enqueue(
            bench.accounts[: sizes.enqueue_in_flight], batch=1, connections=16
        )
    bench.seed.truncate_jobs()
    by_user: dict[str, list[str]] = {}
    for account, user in bench.seed.owners(bench.accounts).items():
        by_user.setdefault(user, []).append(account)
    users = sorted(by_user)[: sizes.clients]
    progress(
        f"4d: {len(users)} users, each with its own JWT and connection, calling EnqueueSync "
        f"for {sizes.clients_seconds:g} s"
    )
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    duplicates = 0
    go = asyncio.Event()
    stop_at = 0.0

    async def client(user: str) -> None:
        nonlocal duplicates
        token = issue_token(bench.jwt_secret, user_id=user, role=Role.AUTHENTICATED)
        metadata = (("authorization", f"Bearer {token}"),)
        accounts = itertools.cycle(by_user[user])
        # A subchannel of its own: one TCP connection per user, as separate clients have.
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(bench.queue_addr, options=options) as channel:
            await channel.channel_ready()
            stub = pb_grpc.QueueServiceStub(channel)
            await go.wait()
            while time.perf_counter() < stop_at:
                request = pb.EnqueueSyncRequest(
                    account_id=next(accounts), sync_type=pb.SYNC_TYPE_FULL
                )
                started = time.perf_counter()
                try:
                    reply = await stub.EnqueueSync(request, metadata=metadata, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    outcome = exc.code().name
                else:
                    outcome = "OK"
                    duplicates += reply.duplicate
                latencies.append(time.perf_counter() - started)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def report() -> None:
        while True:
            await asyncio.sleep(5)
            left = max(0.0, stop_at - time.perf_counter())
            progress(f"4d: {len(latencies):,} calls so far, {left:.0f} s left")

    tasks = [asyncio.create_task(client(u)) for u in users]
    await asyncio.sleep(1.0)  # every channel connected
    cpu = bench.cpu_window({"queue": bench.queue_pid}, client=True)
    await cpu.start()
    stop_at = time.perf_counter() + sizes.clients_seconds
    go.set()
    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*tasks)
    finally:
        reporter.cancel()
    await cpu.stop()
    calls = len(latencies)
    rate = calls / cpu.wall
    stats = percentiles_ms(latencies)
    progress(
        f"4d: {rate:,.0f} calls/s, p50 {stats['p50_ms']:,.1f} ms, p99 {stats['p99_ms']:,.1f} ms"
    )
    note = (
        f"p50 {stats['p50_ms']:,.1f} ms; {calls:,} calls in {cpu.wall:.1f} s (calls under way "
        f"at the end finish and count); outcomes {outcomes}; {duplicates} duplicates; "
        "PostgreSQL alone: one enqueue statement on 16 connections"
    )
    bench.rows.append(
        Row(
            "4d",
            f"enqueue: {len(users)} users at once, calls/s",
            rate,
            "calls/s",
            raw.rate,
            cpu=cpu_text(cpu, calls, "call"),
            note=note,
        )
    )
    bench.rows.append(
        Row(
            "4d",
            f"enqueue: {len(users)} users at once, p99",
            stats["p99_ms"],
            "ms",
            target="<= 100 ms",
        )
    )
    bench.figures["4d_many_users"] = {
        "users": len(users),
        "seconds": round(cpu.wall, 2),
        "calls": calls,
        "calls_per_s": round(rate, 1),
        "latency": stats,
        "outcomes": outcomes,
        "duplicates": duplicates,
        "cpu_ms_per_call": cpu.per_unit_ms(calls),
        "raw_16_connections": raw.as_dict(),
    }
