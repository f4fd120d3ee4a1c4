"""SyncService wired together: database, token cipher, Google client, syncer, gRPC server.

`SyncApp(settings).start()` returns the bound port (listen on "127.0.0.1:0" in tests);
`stop(grace)` drains in-flight RPCs, then closes the HTTP pool, the quota limiter and the
database engine.
"""

from __future__ import annotations

import asyncio
import logging

from gmbsync.sync.v1 import sync_service_pb2_grpc as pb_grpc
from service_runtime.auth import AuthInterceptor
from service_runtime.database import create_engine_async
from service_runtime.metrics import MetricsServer
from service_runtime.serving import GrpcServer, ServiceRegistration
from sync_service.crypto import cipher_from_settings
from sync_service.google_client import GoogleApi
from sync_service.quota import quota_from_settings
from sync_service.servicer import POLICY, SERVICE_NAME, SyncServicer
from sync_service.settings import SyncSettings
from sync_service.store import SyncStore
from sync_service.sync import Syncer

log = logging.getLogger(__name__)


class SyncApp:
    """One SyncService process."""

    def __init__(self, settings: SyncSettings) -> None:
        self.settings = settings
        self.store: SyncStore | None = None
        self.google: GoogleApi | None = None
        self.syncer: Syncer | None = None
        self.server: GrpcServer | None = None
        self.metrics = MetricsServer(settings.metrics_addr)

    async def _build(self) -> GrpcServer:
        settings = self.settings
        if not settings.auth.jwt_secret and not settings.auth.trigger_secret:
            log.warning("neither JWT_SECRET nor TRIGGER_SECRET is set: every RPC will be refused")
        # Reading (or creating) a key file is blocking file I/O: keep it off the event loop.
        cipher = await asyncio.to_thread(
            cipher_from_settings, settings.token_encryption_keys, settings.token_key_file
        )
        engine = create_engine_async(settings.database_url, pool=settings.db_pool)
        self.store = SyncStore(engine, cipher)
        # On PostgreSQL the quota is shared with every replica on the database; SQLite: local.
        quota = quota_from_settings(settings.google, engine)
        self.google = GoogleApi(settings.google, quota=quota)
        self.syncer = Syncer(self.store, self.google, settings)
        servicer = SyncServicer(self.store, self.syncer)
        self.server = GrpcServer(
            listen_addr=settings.listen_addr,
            services=[
                ServiceRegistration(
                    SERVICE_NAME,
                    lambda server: pb_grpc.add_SyncServiceServicer_to_server(servicer, server),
                )
            ],
            interceptors=[AuthInterceptor(settings.auth, POLICY)],
            health_probe=self.store.ping,
            tls=settings.tls,
        )
        return self.server

    async def start(self) -> int:
        """Starts serving; returns the bound port."""
        server = await self._build()
        try:
            self.metrics.start()
            return await server.start()
        except BaseException:
            await self._close_resources()
            raise

    async def stop(self, grace: float = 5.0) -> None:
        """Drains in-flight RPCs for `grace` seconds, then releases every resource."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        await self._close_resources()

    async def run_until_signal(self) -> None:
        """Serves until SIGTERM or SIGINT, then drains for GRACE_PERIOD (`python -m sync_service`)."""
        server = await self._build()
        try:
            self.metrics.start()
            await server.run_until_signal(self.settings.grace_period.total_seconds())
        finally:
            self.server = None
            await self._close_resources()

    async def _close_resources(self) -> None:
        self.metrics.stop()
        if self.syncer is not None:
            # A location write that a deadline cut short finishes before the database closes.
            await self.syncer.drain()
            self.syncer = None
        if self.google is not None:
            await self.google.aclose()
            self.google = None
        if self.store is not None:
            await self.store.engine.dispose()
            self.store = None
