"""`python -m benchmarks` (what `make bench` runs): every figure of the queue and the worker next
to PostgreSQL's own limit, measured in the same run, then the sync of one big account.

    python -m benchmarks                 # the full run (about 10 minutes)
    python -m benchmarks --quick         # a smoke run (under 2 minutes)
    python -m benchmarks --only drain,pick --markdown
    python -m benchmarks --quota         # also the shared-quota benchmark (about 2 minutes)
    python -m benchmarks --quota-only

Progress goes to stderr, the table to stdout, every figure with the machine, the versions and
the settings to `--json-out` (var/bench.json). The processes' own output is kept in
var/bench-logs/<time>/. Ctrl-C or SIGTERM stops every process and drops the scratch database.
"""

from __future__ import annotations

import os

# The benchmark starts processes while its gRPC channels are open; gRPC's fork handlers have
# nothing to do for a child that execs at once (and say so on stderr every time).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import ROOT, machine, progress, versions
from benchmarks.queue_bench import FIGURES, Sizes, run_queue_benchmark, sizes_dict
from benchmarks.rawsql import RAW_CHANNEL, libpq_url
from benchmarks.report import Row, render_markdown, render_text
from migrations.scratch import postgres_server_url, scratch_database

_SERVER_SETTINGS = (
    "server_version",
    "shared_buffers",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "autovacuum",
    "max_connections",
    "shared_preload_libraries",
)


def _postgres() -> dict[str, str]:
    url = libpq_url(postgres_server_url().render_as_string(hide_password=False))
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings"
            " WHERE name = ANY(%s)",
            (list(_SERVER_SETTINGS),),
        ).fetchall()
    return dict(rows)


async def _sync_rows() -> tuple[list[Row], dict[str, Any]]:
    from benchmarks.sync_bench import LOCATIONS, REVIEWS, run_sync_benchmark

    progress(f"S: one full sync of {LOCATIONS} locations x {REVIEWS} reviews (emulator)")
    figures = await run_sync_benchmark()
    rows = []
    for key, label in (
        ("first_full_sync", "first full sync"),
        ("repeat_full_sync", "repeated full sync"),
        ("incremental_sync_after_one_new_review", "incremental sync, one new review"),
    ):
        run = figures[key]
        rows.append(
            Row(
                "S",
                f"{label}, {LOCATIONS} locations x {REVIEWS} reviews",
                run["wall_seconds"],
                "s",
                note=f"{run['http_calls']} HTTP calls",
            )
        )
    return rows, figures


async def _quota(quick: bool) -> dict[str, Any]:
    from benchmarks.quota_bench import Workload, run_quota_benchmark

    workload = Workload(accounts=60) if quick else Workload()
    progress(
        f"Q: shared Google quota ({workload.replicas} SyncService replicas, "
        f"{workload.workers} workers, {workload.accounts} accounts)"
    )
    return await run_quota_benchmark(workload)


def _write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    progress(f"figures written to {path}")


async def main(args: argparse.Namespace) -> int:
    sizes = Sizes.quick() if args.quick else Sizes()
    only = set(filter(None, (args.only or "").split(",")))
    unknown = only - set(FIGURES) - {"sync"}
    if unknown:
        print(f"--only: unknown figure(s) {sorted(unknown)}; choose from {(*FIGURES, 'sync')}")
        return 2
    started = datetime.now(UTC)
    log_dir = ROOT / "var" / "bench-logs" / started.strftime("%Y%m%dT%H%M%SZ")
    postgres = _postgres()
    report: dict[str, Any] = {
        "run": {
            "started_at": started.isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "only": sorted(only),
            "machine": machine(),
            "versions": versions(postgres),
            "postgresql_settings": postgres,
            "sizes": sizes_dict(sizes),
            "raw_notify_channel": RAW_CHANNEL,
            "logs": str(log_dir),
        },
        "figures": {},
        "table": [],
    }
    rows: list[Row] = []
    if not args.quota_only:
        progress(f"{'quick' if args.quick else 'full'} run; process logs in {log_dir}")
        queue_figures = [f for f in FIGURES if not only or f in only]
        if queue_figures:
            with scratch_database("gmbsync_bench") as url:
                queue_rows, figures, facts = await run_queue_benchmark(sizes, url, log_dir, only)
            rows += queue_rows
            report["figures"].update(figures)
            report["run"].update(facts)
        if not only or "sync" in only:
            sync_rows, sync_figures = await _sync_rows()
            rows += sync_rows
            report["figures"]["S_sync_one_account"] = sync_figures
    if args.quota or args.quota_only:
        report["figures"]["Q_shared_quota"] = await _quota(args.quick)
    report["run"]["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["run"]["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["table"] = [row.as_dict() for row in rows]

    _write_json(Path(args.json_out), report)

    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    run = report["run"]
    m, v = run["machine"], run["versions"]
    print(
        f"\n{run['mode']} run {run['started_at']}: {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['cpu_model']}; load {m['load_average_at_start']} -> {m['load_average_at_end']}; "
        f"PostgreSQL {v['postgresql_server']}, Python {v['python']}, grpcio {v['grpcio']}, "
        f"psycopg {v['psycopg']}, SQLAlchemy {v['sqlalchemy']}"
    )
    if "commit_rate_per_s" in run:
        print(f"disk commits/s on one connection (start, middle, end): {run['commit_rate_per_s']}")
    print()
    print(render_markdown(rows) if args.markdown else render_text(rows))
    if "Q_shared_quota" in report["figures"]:
        print("\nshared Google quota:")
        print(json.dumps(report["figures"]["Q_shared_quota"], indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument(
        "--only",
        metavar="FIGURES",
        help=f"comma-separated subset of: {', '.join(FIGURES)}, sync",
    )
    parser.add_argument(
        "--json-out", default="var/bench.json", help="where to write every figure as JSON"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--quota", action="store_true", help="also run the shared-quota benchmark")
    parser.add_argument(
        "--quota-only", action="store_true", help="run only the shared-quota benchmark"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    async def guarded() -> int:
        # SIGTERM cancels the run as Ctrl-C does: every process is stopped on the way out.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main(args)
        except asyncio.CancelledError:
            progress("stopped; every process was stopped and the scratch database dropped")
            return 128 + signal.SIGTERM

    try:
        return asyncio.run(guarded())
    except KeyboardInterrupt:
        progress("interrupted; every process was stopped and the scratch database dropped")
        return 130


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(_run(_parser().parse_args()))
