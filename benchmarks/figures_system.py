"""Figure 2: the whole system. The worker (concurrency 64), the real SyncService and the Google
emulator sync accounts of one location and a few reviews each; syncs per second, and the CPU
per sync of every process: QueueService, SyncService, the worker, the emulator and the
PostgreSQL backends. There is no single-statement equivalent to hold it against: the
instant-SyncService drain (figure 1) is its queue-only ceiling.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
from cryptography.fernet import Fernet

from benchmarks.harness import Processes, free_port, progress, wait_for_health, wait_for_port
from benchmarks.queue_bench import PYTHON, QueueBench, cpu_text
from benchmarks.report import Row
from gmbsync.sync.v1 import sync_service_pb2 as spb
from gmbsync.sync.v1 import sync_service_pb2_grpc as spb_grpc


async def _connect_accounts(bench: QueueBench, sync_addr: str, count: int) -> list[str]:
    """Connects the emulator's accounts/1..count for one user, 8 calls at a time."""
    progress(f"2: connecting {count} accounts through ConnectAccount")
    user = str(uuid.uuid4())
    numbers = list(range(1, count + 1))
    ids: list[str] = []
    async with grpc.aio.insecure_channel(sync_addr) as channel:
        stub = spb_grpc.SyncServiceStub(channel)

        async def connector() -> None:
            while numbers:
                n = numbers.pop()
                reply = await stub.ConnectAccount(
                    spb.ConnectAccountRequest(
                        user_id=user,
                        account_name=f"Bench Business {n}",
                        google_account_id=f"accounts/{n}",
                        refresh_token=f"emulator-refresh-token-{n}",
                    ),
                    metadata=bench.worker_md,
                    timeout=30,
                )
                ids.append(reply.account.id)

        await asyncio.gather(*(connector() for _ in range(8)))
    return ids


async def system_figure(bench: QueueBench) -> None:
    sizes = bench.sizes
    accounts = sizes.system_accounts
    emulator_port, sync_port = free_port(), free_port()
    sync_addr = f"127.0.0.1:{sync_port}"
    progress(f"2: starting the Google emulator and SyncService ({accounts} accounts)")
    async with Processes(bench.log_dir) as procs:
        emulator = await procs.start(
            "emulator",
            [
                PYTHON,
                "-m",
                "sync_service.emulator",
                "--port",
                str(emulator_port),
                "--accounts",
                str(accounts),
                "--locations",
                "1",
                "--reviews",
                str(sizes.system_reviews),
                "--quota",
                "1000000",
            ],
            bench.env,
        )
        await wait_for_port(emulator_port, emulator)
        sync = await procs.start(
            "sync",
            [PYTHON, "-m", "sync_service"],
            {
                **bench.env,
                "SYNC_LISTEN_ADDR": sync_addr,
                "GBP_API_ROOT": f"http://127.0.0.1:{emulator_port}",
                "GOOGLE_OAUTH_CLIENT_ID": "bench-client",
                "GOOGLE_OAUTH_CLIENT_SECRET": "bench-secret",
                # The system's own speed, not Google's quota (benchmarks.quota_bench has that).
                "GBP_QUOTA_PER_MINUTE": "1000000",
                "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            },
        )
        await wait_for_health(sync_addr, sync)
        ids = await _connect_accounts(bench, sync_addr, accounts)
        bench.seed.truncate_jobs()
        await bench.enqueue_batches(ids)
        progress(f"2: {accounts} full syncs enqueued; starting the worker")
        result = await bench.drain_with_worker(
            "2",
            accounts,
            time_limit=sizes.system_time_limit,
            processes={"queue": bench.queue_pid, "sync": sync.pid, "emulator": emulator.pid},
            start_worker=lambda: bench.start_worker(
                "bench-system", concurrency=sizes.concurrency, sync_addr=sync_addr
            ),
        )
        reviews = (await bench.query("SELECT count(*) FROM gmb_reviews"))[0][0]
    note = (
        f"{result.jobs} full syncs of 1 location x {sizes.system_reviews} reviews "
        f"({reviews} reviews stored)"
    )
    if result.failed:
        note += f"; {result.failed} jobs did not succeed"
    if result.time_limited:
        note += f"; stopped by the {sizes.system_time_limit:g} s limit"
    bench.rows.append(
        Row(
            "2",
            "whole system: worker + SyncService + emulator",
            result.rate,
            "syncs/s",
            cpu=cpu_text(result.cpu, result.jobs, "sync"),
            note=note,
        )
    )
    bench.figures["2_whole_system"] = {
        "accounts": accounts,
        "locations_per_account": 1,
        "reviews_per_location": sizes.system_reviews,
        "syncs": result.jobs,
        "failed": result.failed,
        "seconds": round(result.seconds, 3),
        "syncs_per_s": round(result.rate, 1),
        "time_limited": result.time_limited,
        "cpu_seconds": {k: round(v, 3) for k, v in result.cpu.seconds.items()},
        "cpu_ms_per_sync": result.cpu.per_unit_ms(result.jobs),
        "database_sessions_opened": result.cpu.sessions_opened,
    }
