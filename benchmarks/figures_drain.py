"""Draining: the worker's own code against an instant SyncService (figure 1), with the job
handler in the worker (1h) and with jobs prefetched too (1p), its memory and QueueService's
over a longer drain (figure 7), and the older picker figures (L1, L2).

PostgreSQL's limit for figure 1 is the pick and the completion at the worker's batch size (its
concurrency, 64): one statement picks 64 jobs and one completes them, on 4 connections,
measured before and after the worker's drain (the better of the two counts). The same
statements one job at a time are shown beside it: that is the shape of the worker's own calls
(one CompleteJob per job).
"""

from __future__ import annotations

import asyncio

import grpc

from benchmarks.harness import Child, RssSampler, progress
from benchmarks.queue_bench import RAW_CONNECTIONS, DrainResult, QueueBench, cpu_text
from benchmarks.report import Row
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc


async def drain_figure(bench: QueueBench) -> None:
    """Figure 1: pre-enqueued jobs drained by `python -m clients.worker` (concurrency 64)."""
    sizes = bench.sizes
    jobs = sizes.drain_jobs
    limits = [await bench.raw_drain(jobs, pick=sizes.concurrency)]
    one_by_one = await bench.raw_drain(min(jobs, sizes.raw_one_per_statement_jobs), pick=1)
    result = await _drain(bench, "1", "instant SyncService", "bench-drain")
    in_process = await _drain(
        bench,
        "1h",
        "a handler in the worker that returns at once",
        "bench-drain-instant",
        module="benchmarks.instant_worker",
    )
    prefetching = await _drain(
        bench,
        "1p",
        f"as 1h, and WORKER_PREFETCH={sizes.concurrency}: jobs leased ahead of a free slot",
        "bench-drain-prefetch",
        module="benchmarks.instant_worker",
        prefetch=sizes.concurrency,
    )
    limits.append(await bench.raw_drain(jobs, pick=sizes.concurrency))
    limit = max(f.rate for f in limits)
    per_pick = result.jobs / max(result.picks, 1)
    note = (
        f"PostgreSQL alone: pick {sizes.concurrency} + complete {sizes.concurrency} per "
        f"statement on {RAW_CONNECTIONS} connections, best of "
        f"{' and '.join(f'{f.rate:,.0f}' for f in limits)} jobs/s; one job per statement "
        f"{one_by_one.rate:,.0f} jobs/s, of which the worker reached "
        f"{100 * result.rate / max(one_by_one.rate, 1e-9):.0f} %; "
        f"{per_pick:.1f} jobs per PickJobs on average"
    )
    if result.time_limited:
        note += f"; {result.jobs:,} of {jobs:,} drained by the {sizes.drain_time_limit:g} s limit"
    if result.failed:
        note += f"; {result.failed} jobs did not succeed"
    bench.rows.append(
        Row(
            "1",
            f"drain by the worker ({sizes.concurrency} at once), instant sync",
            result.rate,
            "jobs/s",
            limit,
            target=">= 60 % and >= 25,000 jobs/s",
            cpu=cpu_text(result.cpu, result.jobs, "job"),
            note=note,
        )
    )
    _in_process_row(bench, in_process, limit, "1h")
    _in_process_row(bench, prefetching, limit, "1p", prefetch=sizes.concurrency)
    bench.figures["1_worker_drain"] = {
        "jobs_enqueued": jobs,
        "jobs_drained": result.jobs,
        "seconds": round(result.seconds, 3),
        "jobs_per_s": round(result.rate, 1),
        "time_limited": result.time_limited,
        "failed": result.failed,
        "picks": result.picks,
        "mean_jobs_per_pick": round(per_pick, 2),
        "cpu_seconds": {k: round(v, 3) for k, v in result.cpu.seconds.items()},
        "cpu_ms_per_job": result.cpu.per_unit_ms(result.jobs),
        "database_sessions_opened": result.cpu.sessions_opened,
        "raw_batch": [f.as_dict() for f in limits],
        "raw_one_job_per_statement": one_by_one.as_dict(),
    }


async def _drain(
    bench: QueueBench,
    figure: str,
    how: str,
    worker_name: str,
    *,
    module: str = "clients.worker",
    prefetch: int | None = None,
) -> DrainResult:
    """One drain of figure 1: the same pending jobs, enqueued afresh, drained by a worker run
    as `module` (`clients.worker` calls the stand-in SyncService, whose CPU counts too)."""
    sizes = bench.sizes
    jobs = sizes.drain_jobs
    bench.seed.truncate_jobs()
    bench.seed.pending_jobs(bench.accounts[:jobs])
    progress(
        f"{figure}: draining {jobs:,} jobs with the worker (concurrency {sizes.concurrency}, {how})"
    )
    processes = {"queue": bench.queue_pid}
    if module == "clients.worker":
        processes["fake_sync"] = bench.fake_pid
    return await bench.drain_with_worker(
        figure,
        jobs,
        time_limit=sizes.drain_time_limit,
        processes=processes,
        start_worker=lambda: bench.start_worker(
            worker_name, concurrency=sizes.concurrency, module=module, prefetch=prefetch
        ),
    )


def _in_process_row(
    bench: QueueBench, result: DrainResult, limit: float, figure: str, *, prefetch: int = 0
) -> None:
    """Figure 1h: the same drain with the job handler in the worker (`benchmarks.instant_worker`),
    so that no SyncAccount call is made: the queue's own cost, worker loop included. Figure 1p:
    the same with `prefetch` jobs leased ahead of a free slot (WORKER_PREFETCH)."""
    sizes = bench.sizes
    per_pick = result.jobs / max(result.picks, 1)
    note = (
        f"the worker's own code with SyncService replaced in its process by a handler that "
        f"returns at once{f', WORKER_PREFETCH={prefetch}' if prefetch else ''}; "
        f"PostgreSQL alone as for figure 1; {per_pick:.1f} jobs per PickJobs"
    )
    if result.time_limited:
        note += (
            f"; {result.jobs:,} of {sizes.drain_jobs:,} drained by the "
            f"{sizes.drain_time_limit:g} s limit"
        )
    if result.failed:
        note += f"; {result.failed} jobs did not succeed"
    bench.rows.append(
        Row(
            figure,
            f"drain by the worker ({sizes.concurrency} at once), handler in the worker"
            + (f", {prefetch} prefetched" if prefetch else ""),
            result.rate,
            "jobs/s",
            limit,
            target=">= 60 % and >= 25,000 jobs/s",
            cpu=cpu_text(result.cpu, result.jobs, "job"),
            note=note,
        )
    )
    key = "1p_worker_drain_prefetching" if prefetch else "1h_worker_drain_in_process_handler"
    bench.figures[key] = {
        "jobs_drained": result.jobs,
        "seconds": round(result.seconds, 3),
        "jobs_per_s": round(result.rate, 1),
        "time_limited": result.time_limited,
        "failed": result.failed,
        "picks": result.picks,
        "mean_jobs_per_pick": round(per_pick, 2),
        "cpu_ms_per_job": result.cpu.per_unit_ms(result.jobs),
        "prefetch": prefetch,
    }


async def memory_figure(bench: QueueBench) -> None:
    """Figure 7: RSS of QueueService and of the worker every second of a long drain."""
    sizes = bench.sizes
    bench.seed.truncate_jobs()
    bench.seed.pending_jobs(bench.accounts[: sizes.rss_jobs])
    progress(f"7: draining {sizes.rss_jobs:,} jobs, sampling RSS every second")
    samplers: list[RssSampler] = []

    def sample(worker: Child) -> None:
        sampler = RssSampler({"queue": bench.queue_pid, "worker": worker.pid})
        sampler.start()
        samplers.append(sampler)

    result = await bench.drain_with_worker(
        "7",
        sizes.rss_jobs,
        time_limit=sizes.rss_time_limit,
        processes={"queue": bench.queue_pid, "fake_sync": bench.fake_pid},
        start_worker=lambda: bench.start_worker("bench-rss", concurrency=sizes.concurrency),
        on_start=sample,
    )
    memory = await samplers[0].stop()
    drained = f"{result.jobs:,} jobs at {result.rate:,.0f} jobs/s" + (
        f", stopped by the {sizes.rss_time_limit:g} s limit" if result.time_limited else ""
    )
    for name, label in (("queue", "QueueService"), ("worker", "the worker")):
        m = memory.get(name)
        if not m:
            continue
        bench.rows.append(
            Row(
                "7",
                f"peak RSS of {label} while draining",
                m["peak_mib"],
                "MiB",
                note=f"start {m['start_mib']} MiB, end {m['end_mib']} MiB; mean of the first "
                f"quarter {m['first_quarter_mib']} MiB, of the last {m['last_quarter_mib']} MiB:"
                f" {'grew' if m['grew'] else 'did not grow'} over {drained}",
            )
        )
    bench.figures["7_memory"] = {
        "jobs_enqueued": sizes.rss_jobs,
        "jobs_drained": result.jobs,
        "jobs_per_s": round(result.rate, 1),
        "time_limited": result.time_limited,
        "cpu_ms_per_job": result.cpu.per_unit_ms(result.jobs),
        "rss": memory,
    }


async def legacy_figures(bench: QueueBench) -> None:
    """L1 and L2: 4 pickers of this process draining seeded jobs, 10 per PickJobs with one
    ReportResults per pick, and one per PickJobs with one CompleteJob per job."""
    sizes = bench.sizes
    for figure, jobs, batch, name in (
        ("L1", sizes.legacy_batched_jobs, 10, "4 pickers: PickJobs(10) + ReportResults"),
        ("L2", sizes.legacy_single_jobs, 1, "4 pickers: PickJobs(1) + CompleteJob"),
    ):
        raw = await bench.raw_drain(jobs, pick=batch)
        bench.seed.truncate_jobs()
        bench.seed.pending_jobs(bench.accounts[:jobs])
        progress(f"{figure}: {jobs:,} jobs, {name}")
        cpu = bench.cpu_window({"queue": bench.queue_pid}, client=True)
        await cpu.start()
        done = sum(await asyncio.gather(*(_picker(bench, n, batch) for n in range(4))))
        await cpu.stop()
        if done != jobs:
            raise RuntimeError(f"{figure}: drained {done} jobs, expected {jobs}")
        rate = jobs / cpu.wall
        progress(f"{figure}: {rate:,.0f} jobs/s (PostgreSQL alone {raw.rate:,.0f})")
        bench.rows.append(
            Row(
                figure,
                name,
                rate,
                "jobs/s",
                raw.rate,
                cpu=cpu_text(cpu, jobs, "job"),
                note=f"PostgreSQL alone: pick {batch} + complete {batch} per statement on "
                f"{RAW_CONNECTIONS} connections",
            )
        )
        bench.figures[f"{figure}_pickers_batch_{batch}"] = {
            "jobs": jobs,
            "jobs_per_s": round(rate, 1),
            "seconds": round(cpu.wall, 3),
            "raw": raw.as_dict(),
            "cpu_ms_per_job": cpu.per_unit_ms(jobs),
        }


async def _picker(bench: QueueBench, number: int, batch: int) -> int:
    done = 0
    md = bench.worker_md
    async with grpc.aio.insecure_channel(bench.queue_addr) as channel:
        stub = pb_grpc.QueueServiceStub(channel)
        while True:
            response = await stub.PickJobs(
                pb.PickJobsRequest(max_jobs=batch, worker_id=f"bench-picker-{number}"),
                metadata=md,
            )
            if not response.jobs:
                return done
            if batch == 1:
                job = response.jobs[0]
                await stub.CompleteJob(
                    pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token),
                    metadata=md,
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
                    metadata=md,
                )
            done += len(response.jobs)
