"""`python -m clients.worker [--once] [flags]`: runs the worker until SIGTERM/SIGINT.

Exit codes: 0 after a clean run (a signal included), 1 when the run failed or could not be
recorded, 2 for a bad setting (one line on stderr names it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from clients.errors import ClientError
from clients.worker.config import WorkerConfig, load_config
from clients.worker.runner import Worker
from service_runtime.collector import collector_mode, settle_collector
from service_runtime.config import ConfigError, parse_metrics_addr
from service_runtime.eventloop import loop_factory
from service_runtime.eventloop import run as run_on_loop
from service_runtime.metrics import start_metrics_server
from service_runtime.serving import configure_logging
from service_runtime.telemetry import configure_tracing, shutdown_tracing

log = logging.getLogger("clients.worker")


async def _serve(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop, signal.Signals(sig).name)
    try:
        summary = await worker.run()
    except ClientError as exc:
        # Not worth retrying (wrong TRIGGER_SECRET, an incompatible server): say so and stop.
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    if config.once:
        print(json.dumps(summary.as_dict()), flush=True)
    if summary.error:
        log.error("worker run ended with an error: %s", summary.error)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
        configure_logging(config.log_level)
        configure_tracing("gmbsync-worker")
        event_loop = loop_factory()
        collector = collector_mode()
    except (ConfigError, ValueError) as exc:
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        start_metrics_server(parse_metrics_addr("WORKER_METRICS_ADDR", config.metrics_addr))
    except OSError as exc:
        print(f"worker: cannot serve metrics on {config.metrics_addr}: {exc}", file=sys.stderr)
        return 2
    settle_collector(collector)
    try:
        return run_on_loop(_serve(config), event_loop)
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    sys.exit(main())
