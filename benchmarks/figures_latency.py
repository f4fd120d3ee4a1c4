"""Latency: enqueue-to-start with an idle waiting worker (figure 3), and PickJobs(10) on a big
table against a near-empty one, with and without the table settings of fast PostgreSQL queues
(figure 6).

Figure 3's reference is PostgreSQL alone doing the same with LISTEN: a connection waits for the
enqueue's NOTIFY and then picks. Figure 6 alternates a raw pick and a PickJobs call, so both see
the same moment of a noisy machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.harness import progress
from benchmarks.queue_bench import QueueBench
from benchmarks.rawsql import percentiles_ms
from benchmarks.report import Row
from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.tables import QUEUE_TABLE_STORAGE

# The table settings of the queue (migrated; `queue_service.tables.QUEUE_TABLE_STORAGE`): room on
# each page for updated rows, and autovacuum after a fixed number of dead rows rather than a share.
# Figure 6 compares them with PostgreSQL's defaults (RESET, then VACUUM FULL for fillfactor).
QUEUE_TABLE_SETTINGS = QUEUE_TABLE_STORAGE


async def enqueue_to_start_figure(bench: QueueBench) -> None:
    """Figure 3: jobs enqueued one by one at a steady rate to one idle worker (its default
    concurrency) waiting in PickJobs; created_at to started_at, both stamped by QueueService,
    read back with ListJobs."""
    sizes = bench.sizes
    count, rate = sizes.latency_jobs, sizes.latency_rate
    bench.seed.truncate_jobs()
    progress(f"3: PostgreSQL alone, {count:,} jobs at {rate:g}/s to a LISTENing picker")
    pairs = await bench.raw.enqueue_to_start(bench.accounts[count : 2 * count], rate)
    raw = percentiles_ms([(started - created).total_seconds() for created, started in pairs])
    bench.seed.truncate_jobs()
    worker = await bench.start_worker("bench-waiter", concurrency=None)
    await bench.wait_for_runs(1)
    await asyncio.sleep(1.0)  # its first PickJobs is waiting
    progress(f"3: {count:,} EnqueueSync at {rate:g}/s to an idle waiting worker")
    began = time.perf_counter()
    for index, account in enumerate(bench.accounts[:count]):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await bench.stub.EnqueueSync(
            pb.EnqueueSyncRequest(account_id=account, sync_type=pb.SYNC_TYPE_FULL),
            metadata=bench.worker_md,
        )
    await bench.wait_until_drained(timeout=60)
    await bench.procs.stop(worker, hurry=True)
    samples: list[float] = []
    token = ""
    while True:
        page = await bench.stub.ListJobs(
            pb.ListJobsRequest(status=pb.JOB_STATUS_SUCCEEDED, page_size=500, page_token=token),
            metadata=bench.worker_md,
        )
        samples += [
            (j.started_at.ToDatetime() - j.created_at.ToDatetime()).total_seconds()
            for j in page.jobs
        ]
        token = page.next_page_token
        if not token:
            break
    measured = percentiles_ms(samples)
    progress(
        f"3: p50 {measured['p50_ms']:.2f} ms, p99 {measured['p99_ms']:.2f} ms "
        f"(PostgreSQL alone {raw['p50_ms']:.2f} / {raw['p99_ms']:.2f} ms)"
    )
    bench.rows.append(
        Row(
            "3",
            "enqueue to start, p50 (idle waiting worker)",
            measured["p50_ms"],
            "ms",
            raw["p50_ms"],
            higher_is_better=False,
            target="<= 3 ms",
            note=f"{len(samples)} of {count} jobs at {rate:g}/s; PostgreSQL alone: a "
            "connection LISTENs, picks on each NOTIFY",
        )
    )
    bench.rows.append(
        Row(
            "3",
            "enqueue to start, p99",
            measured["p99_ms"],
            "ms",
            raw["p99_ms"],
            higher_is_better=False,
            target="<= 10 ms",
        )
    )
    bench.figures["3_enqueue_to_start"] = {
        "jobs": count,
        "finished": len(samples),
        "rate_per_s": rate,
        "service": measured,
        "raw": raw,
    }


async def _alternating_picks(bench: QueueBench, picks: int) -> tuple[list[float], list[float]]:
    """`picks` raw picks of 10 and as many PickJobs(10), one after the other."""
    (conn,) = await bench.raw.connect(1)
    raw: list[float] = []
    service: list[float] = []
    request = pb.PickJobsRequest(max_jobs=10, worker_id="bench-latency")
    try:
        for _ in range(picks):
            started = time.perf_counter()
            await bench.raw.pick(conn, 10, "raw-latency", None)
            raw.append(time.perf_counter() - started)
            started = time.perf_counter()
            await bench.stub.PickJobs(request, metadata=bench.worker_md)
            service.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return raw, service


async def _table_stats(bench: QueueBench) -> dict[str, Any]:
    rows = await bench.query(
        "SELECT pg_total_relation_size('sync_queue'), pg_relation_size('sync_queue'),"
        " n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd"
        " FROM pg_stat_user_tables WHERE relname = 'sync_queue'"
    )
    total, heap, live, dead, updated, hot = rows[0]
    return {
        "total_mib": round(total / 2**20, 1),
        "heap_mib": round(heap / 2**20, 1),
        "n_live_tup": live,
        "n_dead_tup": dead,
        "n_tup_upd": updated,
        "n_tup_hot_upd": hot,
    }


async def _pick_state(bench: QueueBench, label: str) -> dict[str, Any]:
    # The set-up's connections have closed, which publishes their statistics; the picks'
    # own are published on close (the raw connection) or within a second or so (QueueService).
    before = await _table_stats(bench)
    raw_samples, service_samples = await _alternating_picks(bench, bench.sizes.pick_samples)
    await asyncio.sleep(1.2)
    after = await _table_stats(bench)
    raw, service = percentiles_ms(raw_samples), percentiles_ms(service_samples)
    updates = after["n_tup_upd"] - before["n_tup_upd"]
    hot = after["n_tup_hot_upd"] - before["n_tup_hot_upd"]
    progress(
        f"6: {label}: PickJobs(10) p50 {service['p50_ms']:.2f} ms, p99 "
        f"{service['p99_ms']:.2f} ms (PostgreSQL alone {raw['p50_ms']:.2f} / "
        f"{raw['p99_ms']:.2f} ms)"
    )
    return {
        "service": service,
        "raw": raw,
        "table": before,
        "hot_update_share": round(hot / updates, 3) if updates else None,
    }


async def pick_figure(bench: QueueBench) -> None:
    """Figure 6. The big table is measured with its settings as migrated, then with PostgreSQL's
    defaults (ALTER TABLE ... RESET, and VACUUM FULL, which fillfactor needs to apply to existing
    rows) on the scratch database; the settings are restored afterwards."""
    sizes = bench.sizes
    picks = sizes.pick_samples
    migrated = (await bench.query("SELECT reloptions FROM pg_class WHERE relname = 'sync_queue'"))[
        0
    ][0]
    partial = [
        name
        for name, definition in await bench.query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'sync_queue'"
        )
        if " WHERE " in definition
    ]
    autovacuum = (await bench.query("SHOW autovacuum"))[0][0]

    bench.seed.truncate_jobs()
    bench.seed.pending_jobs(bench.accounts[: 2 * picks * 10 + 100])
    progress(f"6: near-empty table, {picks} PickJobs(10) and as many raw picks")
    empty = await _pick_state(bench, "near-empty table")

    progress(f"6: inserting {sizes.big_finished:,} finished and {sizes.big_pending:,} pending jobs")
    bench.seed.truncate_jobs()
    bench.seed.finished_jobs(bench.accounts[: sizes.big_pending], sizes.big_finished)
    # A drained queue, analyzed, then a burst: the planner's statistics know of no pending job.
    bench.seed.execute("VACUUM ANALYZE sync_queue")
    bench.seed.pending_jobs(bench.accounts[: sizes.big_pending])
    burst = await _pick_state(bench, "big table, pending jobs newer than the statistics")
    # What autovacuum would have done after such an insert (it is off on some servers).
    bench.seed.execute("VACUUM ANALYZE sync_queue")
    big = await _pick_state(bench, "big table, as migrated")

    settings = ", ".join(f"{k} = {v}" for k, v in QUEUE_TABLE_SETTINGS.items())
    progress("6: ALTER TABLE sync_queue RESET (queue settings); VACUUM FULL to apply fillfactor")
    bench.seed.execute(f"ALTER TABLE sync_queue RESET ({', '.join(QUEUE_TABLE_SETTINGS)})")
    bench.seed.execute("VACUUM FULL sync_queue")
    bench.seed.execute("ANALYZE sync_queue")
    untuned = await _pick_state(bench, "big table, PostgreSQL's default settings")
    bench.seed.execute(f"ALTER TABLE sync_queue SET ({settings})")
    bench.seed.truncate_jobs()

    growth = big["service"]["p50_ms"] / empty["service"]["p50_ms"]
    raw_growth = big["raw"]["p50_ms"] / empty["raw"]["p50_ms"]
    hot_migrated, hot_default = big["hot_update_share"], untuned["hot_update_share"]
    settings_note = (
        "fillfactor and autovacuum settings are "
        + (f"migrated as {migrated}" if migrated else "missing from the migrations")
        + f"; partial indexes: {', '.join(partial) or 'none'}; this row: {settings} reset to "
        f"PostgreSQL's defaults (fillfactor applied by VACUUM FULL); server autovacuum = "
        f"{autovacuum}"
        + (", so the autovacuum settings are inert here" if autovacuum != "on" else "")
        + f"; HOT share of the picks' updates {hot_migrated} as migrated, {hot_default} with the "
        "defaults (a pick changes indexed columns, which no fillfactor makes HOT)"
    )
    bench.rows += [
        Row(
            "6",
            "PickJobs(10) p50, near-empty table",
            empty["service"]["p50_ms"],
            "ms",
            empty["raw"]["p50_ms"],
            higher_is_better=False,
        ),
        Row(
            "6",
            "PickJobs(10) p50, big table",
            big["service"]["p50_ms"],
            "ms",
            big["raw"]["p50_ms"],
            higher_is_better=False,
            note=f"{sizes.big_finished:,} finished + {sizes.big_pending:,} pending jobs, "
            f"{big['table']['total_mib']:,.0f} MiB with indexes",
        ),
        Row(
            "6",
            "PickJobs(10) p99, big table",
            big["service"]["p99_ms"],
            "ms",
            big["raw"]["p99_ms"],
            higher_is_better=False,
        ),
        Row(
            "6",
            "PickJobs(10) p50, big table, pending jobs newer than the statistics",
            burst["service"]["p50_ms"],
            "ms",
            burst["raw"]["p50_ms"],
            higher_is_better=False,
            note=f"the {sizes.big_finished:,} finished jobs analyzed (VACUUM ANALYZE), then the "
            f"{sizes.big_pending:,} pending ones inserted: the planner's statistics know of none",
        ),
        Row(
            "6",
            "PickJobs(10) p50, big / near-empty",
            growth,
            "x",
            target="<= 1.5x",
            note=f"PostgreSQL alone: {raw_growth:.2f}x",
        ),
        Row(
            "6",
            "PickJobs(10) p50, big table, PostgreSQL's default table settings",
            untuned["service"]["p50_ms"],
            "ms",
            untuned["raw"]["p50_ms"],
            higher_is_better=False,
            note=settings_note,
        ),
    ]
    bench.figures["6_pick_latency"] = {
        "picks": picks,
        "big_table": {"finished": sizes.big_finished, "pending": sizes.big_pending},
        "near_empty": empty,
        "big_pending_newer_than_statistics": burst,
        "big_as_migrated": big,
        "big_with_default_settings": untuned,
        "big_over_near_empty_p50": round(growth, 3),
        "raw_big_over_near_empty_p50": round(raw_growth, 3),
        "migrated_reloptions": migrated,
        "partial_indexes": partial,
        "queue_settings_tried": QUEUE_TABLE_SETTINGS,
        "server_autovacuum": autovacuum,
    }
