"""A stand-in SyncService that answers every SyncAccount at once with an empty success.

`python -m benchmarks.fake_sync --port N` serves until SIGTERM or SIGINT. It lets a benchmark
measure the queue and the worker alone: the worker calls it exactly as it calls SyncService, and
it costs as little as a gRPC server can. The request is not even decoded: the reply is the
empty SyncAccountResponse (zero bytes on the wire, every count 0), which the worker reports as
a success. Other SyncService methods answer UNIMPLEMENTED.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from service_runtime.collector import collector_mode, settle_collector
from service_runtime.eventloop import loop_factory
from service_runtime.eventloop import run as run_on_loop

_SYNC_ACCOUNT = "SyncAccount"
_SERVICE = "gmbsync.sync.v1.SyncService"


async def _sync_account(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                _SERVICE, {_SYNC_ACCOUNT: grpc.unary_unary_rpc_method_handler(_sync_account)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fake_sync", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    # The stand-in runs on the loop SyncService itself runs on, with its collector settings.
    settle_collector(collector_mode())
    run_on_loop(serve(parser.parse_args().port), loop_factory())


if __name__ == "__main__":
    main()
