"""`python -m benchmarks [--quick] [--json] [--quota-only]` (what `make bench` runs): prints
every figure. `--quota-only` runs only the shared-quota benchmark (about two minutes)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
from typing import Any

from benchmarks.queue_bench import run_queue_benchmark
from benchmarks.quota_bench import Workload, run_quota_benchmark


def _print(title: str, figures: dict[str, Any], indent: str = "  ") -> None:
    print(f"\n{title}" if indent == "  " else f"{indent[:-2]}{title}")
    for name, value in figures.items():
        if isinstance(value, dict):
            _print(name, value, indent + "  ")
            continue
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
        print(f"{indent}{name:<48} {shown:>12}")


async def main(quick: bool, as_json: bool, quota_only: bool = False) -> int:
    jobs, single = (2_000, 500) if quick else (10_000, 2_000)
    report: dict[str, dict[str, Any]] = {}
    if not quota_only:
        report[
            "queue (PostgreSQL, gRPC, QueueService in its own process)"
        ] = await run_queue_benchmark(jobs=jobs, single=single)
    if not quota_only and importlib.util.find_spec("benchmarks.sync_bench") is not None:
        from benchmarks.sync_bench import run_sync_benchmark

        report["sync (emulator, no added latency)"] = await run_sync_benchmark()
    workload = Workload(accounts=60) if quick else Workload()
    report[
        f"shared Google quota ({workload.replicas} SyncService replicas, {workload.workers} "
        f"workers, {workload.quota} requests per {workload.window:g} s per API)"
    ] = await run_quota_benchmark(workload)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for title, figures in report.items():
            _print(title, figures)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--quota-only", action="store_true", help="run only the shared-quota benchmark"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(args.quick, args.json, args.quota_only)))
