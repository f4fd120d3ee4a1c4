"""The project's worker with a job handler that returns at once: the queue's own cost.

`python -m benchmarks.instant_worker` runs `clients.worker.Worker`, configured from the
environment exactly as `python -m clients.worker` is, with its real QueueClient (picks, reports,
heartbeats, worker runs over gRPC) but with SyncService replaced in the process by a stand-in
whose SyncAccount answers an empty success at once. Figure 1 with `benchmarks.fake_sync` pays a
gRPC call per job to a second process; this one measures what is left: the worker's loop and
QueueService.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from clients.worker.config import load_config
from clients.worker.runner import Worker
from gmbsync.sync.v1 import sync_service_pb2 as sync_pb
from service_runtime.collector import collector_mode, settle_collector
from service_runtime.eventloop import loop_factory
from service_runtime.eventloop import run as run_on_loop
from service_runtime.serving import configure_logging

_EMPTY = sync_pb.SyncAccountResponse()


class InstantSync:
    """What the worker calls on SyncService, answered in the process at once."""

    async def wait_ready(self, timeout: float) -> None:
        return None

    async def sync_account(self, *_args: Any, **_kwargs: Any) -> sync_pb.SyncAccountResponse:
        return _EMPTY

    async def close(self) -> None:
        return None


async def _run() -> int:
    config = load_config([])
    worker = Worker(config, sync=InstantSync())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop, signal.Signals(sig).name)
    summary = await worker.run()
    return 1 if summary.error else 0


def main() -> int:
    configure_logging(load_config([]).log_level)
    settle_collector(collector_mode())
    return run_on_loop(_run(), loop_factory())


if __name__ == "__main__":
    sys.exit(main())
