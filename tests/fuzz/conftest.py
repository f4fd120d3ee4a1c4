"""Both services on the session's PostgreSQL, and the ways a hostile client can call them.

`services` starts QueueService and SyncService (SyncService against the Google emulator) on
one database, so QueueService sees the accounts SyncService connects. `call_raw` sends bytes as
they are, without a protobuf serializer: what a client with a broken encoder, or an attacker,
sends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor

from gmbsync.queue.v1 import queue_service_pb2 as queue_pb
from gmbsync.sync.v1 import sync_service_pb2 as sync_pb
from service_runtime.auth import Role
from tests.conftest import ADMIN_USER, WORKER_METADATA, bearer
from tests.queue import conftest as queue_fixtures
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue
from tests.sync import conftest as sync_fixtures
from tests.sync.conftest import Harness, MakeHarness

QUEUE_SERVICE: ServiceDescriptor = queue_pb.DESCRIPTOR.services_by_name["QueueService"]
SYNC_SERVICE: ServiceDescriptor = sync_pb.DESCRIPTOR.services_by_name["SyncService"]
USER = uuid.UUID("00000000-0000-4000-8000-0000000000f1")

# Every kind of caller: anonymous, a user, an admin, the service role by JWT and by secret.
ROLES: dict[str, tuple[tuple[str, str], ...]] = {
    "none": (),
    "authenticated": bearer(USER),
    "admin": bearer(ADMIN_USER, Role.ADMIN),
    "service_role": bearer(uuid.uuid4(), Role.SERVICE),
    "trigger_secret": WORKER_METADATA,
}


@dataclass
class Services:
    queue: RunningQueue
    sync: Harness

    def channel_for(self, service: ServiceDescriptor) -> grpc.aio.Channel:
        return self.queue.channel if service is QUEUE_SERVICE else self.sync.channel

    async def call_raw(
        self,
        service: ServiceDescriptor,
        method: str,
        payload: bytes,
        metadata: tuple[tuple[str, str], ...] = WORKER_METADATA,
    ) -> bytes:
        """Sends `payload` as the request of `service`.`method`; returns the raw answer."""
        call = self.channel_for(service).unary_unary(f"/{service.full_name}/{method}")
        return await call(payload, metadata=metadata, timeout=30)


# SyncService's own fixture, offered to these tests too (it stops what it starts).
make_harness = sync_fixtures.make_harness
# QueueService alone on PostgreSQL.
pg_queue = queue_fixtures.pg_queue


@pytest.fixture
async def services(
    pg_url: str,
    auth_settings,  # type: ignore[no-untyped-def]
    make_harness: MakeHarness,
) -> AsyncIterator[Services]:
    sync = await make_harness()
    queue = await start_queue(queue_settings(pg_url, auth_settings))
    yield Services(queue=queue, sync=sync)
    await stop_queue(queue)
