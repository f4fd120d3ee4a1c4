"""Figure 5: what waiting costs. Database transactions per second, and CPU, with QueueService
alone and then with 8 workers (their default concurrency) long-polling an empty queue.

Statements are counted as transactions: the pg_stat_database counters xact_commit +
xact_rollback of the scratch database, read from another database so that reading them adds
nothing. Every statement the services send outside an explicit transaction is one transaction,
and the store's explicit transactions are one each too (a lower bound on statements then).
pg_stat_statements would count statements exactly, but only when the server preloads it; the
figure says which was used. A backend may hold its counts for up to 10 seconds before it
publishes them, so a window starts only that long after the last burst of work (the workers'
start-up counts only where it falls inside that lag), and with `--quick` the window without
workers is skipped.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from benchmarks.harness import Child, progress
from benchmarks.queue_bench import STATS_LAG, QueueBench
from benchmarks.report import Row


async def _statement_counter(bench: QueueBench) -> str:
    """Why transactions are counted: pg_stat_statements is usable only if preloaded."""
    try:
        await bench.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await bench.query("SELECT count(*) FROM pg_stat_statements")
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0][:120]
        return f"pg_stat_statements is not usable on this server ({reason})"
    return "pg_stat_statements is loaded on this server, but transactions are what is counted"


async def _window(
    bench: QueueBench, label: str, workers: list[Child], since_burst: float
) -> dict[str, float]:
    """Counts over `idle_seconds`, starting once the last burst of work (at `since_burst`,
    a monotonic time) can no longer be published late into the window."""
    await asyncio.sleep(max(0.0, since_burst + STATS_LAG - time.monotonic()))
    processes = {"queue": bench.queue_pid} | {w.name: w.pid for w in workers}
    cpu = bench.cpu_window(processes)
    before = await bench.transactions()
    await cpu.start()
    progress(f"5: {label}, counting for {bench.sizes.idle_seconds:g} s")
    await asyncio.sleep(bench.sizes.idle_seconds)
    await cpu.stop()
    # The window's own last counts are published within the lag; what is published meanwhile
    # beyond them is the same steady trickle that was still unpublished at the start.
    await asyncio.sleep(1.5)
    after = await bench.transactions()
    bench.procs.check_alive()
    return {
        "transactions_per_s": round((after - before) / cpu.wall, 2),
        "cpu_ms_per_s": round(1000 * sum(cpu.seconds.values()) / cpu.wall, 2),
        "queue_cpu_ms_per_s": round(1000 * cpu.seconds["queue"] / cpu.wall, 2),
        "postgresql_cpu_ms_per_s": round(1000 * cpu.seconds.get("postgresql", 0.0) / cpu.wall, 2),
    }


async def idle_figure(bench: QueueBench) -> None:
    sizes = bench.sizes
    bench.seed.truncate_jobs()
    burst = time.monotonic()
    counter = await _statement_counter(bench)
    progress(f"5: starting {sizes.idle_workers} workers on an empty queue")
    workers = [
        await bench.start_worker(f"bench-idle-{n}", concurrency=None)
        for n in range(sizes.idle_workers)
    ]
    await bench.wait_for_runs(sizes.idle_workers)
    waiting = await _window(
        bench, f"{sizes.idle_workers} workers waiting", workers, max(burst, time.monotonic() - 8)
    )
    await bench.procs.stop(*workers, hurry=True)
    alone = None
    if sizes.idle_baseline:
        alone = await _window(bench, "QueueService with no worker", [], time.monotonic())
    progress(
        f"5: {waiting['transactions_per_s']:.1f} transactions/s with {sizes.idle_workers} "
        "workers waiting" + (f", {alone['transactions_per_s']:.1f}/s with none" if alone else "")
    )
    note = f"counted as transactions ({counter}); "
    if alone:
        note += f"QueueService with no worker {alone['transactions_per_s']:.1f}/s; "
    note += (
        f"CPU of every process while waiting {waiting['cpu_ms_per_s']:.1f} ms/s (QueueService "
        f"{waiting['queue_cpu_ms_per_s']:.1f}, PostgreSQL {waiting['postgresql_cpu_ms_per_s']:.1f})"
    )
    bench.rows.append(
        Row(
            "5",
            f"idle: {sizes.idle_workers} workers waiting, statements/s",
            waiting["transactions_per_s"],
            "/s",
            target="<= 5/s",
            note=note,
        )
    )
    bench.figures["5_idle"] = {
        "workers": sizes.idle_workers,
        "seconds": sizes.idle_seconds,
        "workers_waiting": waiting,
        "queue_alone": alone,
        "statement_counter": counter,
    }
