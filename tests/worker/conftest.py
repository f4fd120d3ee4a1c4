"""The `rig` fixture: a real QueueService on PostgreSQL and a scripted SyncService (rig.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from gmbsync.sync.v1 import sync_service_pb2_grpc as sync_grpc
from tests.queue.conftest import queue_settings, start_queue, stop_queue
from tests.worker.rig import InstantSync, Rig


@pytest.fixture
async def rig(pg_url: str, auth_settings) -> AsyncIterator[Rig]:
    queue = await start_queue(queue_settings(pg_url, auth_settings))
    sync = InstantSync()
    server = grpc.aio.server()
    sync_grpc.add_SyncServiceServicer_to_server(sync, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    running = Rig(queue=queue, sync=sync, sync_addr=f"127.0.0.1:{port}")
    try:
        yield running
    finally:
        await running.stop_workers()
        await server.stop(0)
        await stop_queue(running.queue)
