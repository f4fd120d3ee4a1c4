"""QueueService assembled: engine, store, wake-up signal, maintenance (with the scheduler of
periodic syncs) and the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service.drivers.base import JobListener
from queue_service.lifecycle import RetryPolicy
from queue_service.maintenance import Maintenance
from queue_service.metrics import GaugeRefresher, MeteredJobStore, MeteredScheduler
from queue_service.notifier import JobSignal
from queue_service.retention import RetentionPolicy
from queue_service.scheduler import ScheduleConfig
from queue_service.servicer import POLICY, SERVICE_NAME, QueueServicer
from queue_service.settings import QueueSettings
from service_runtime.auth import AuthInterceptor
from service_runtime.database import create_engine_async, database_url_from_env
from service_runtime.metrics import MetricsServer
from service_runtime.serving import GrpcServer, ServiceRegistration

log = logging.getLogger(__name__)

# How long start() waits for the LISTEN connection before serving without it.
LISTENER_START_WAIT = 5.0


class QueueApp:
    """One QueueService process. `start()` returns the bound port (0 in the address = any)."""

    def __init__(self, settings: QueueSettings) -> None:
        if not settings.database_url:
            settings = replace(settings, database_url=database_url_from_env())
        self.settings = settings
        self.engine = create_engine_async(settings.database_url, pool=settings.db_pool)
        self.signal = JobSignal()
        self.store = MeteredJobStore(
            self.engine,
            retry_policy=RetryPolicy(base=settings.retry_delay_base, jitter=settings.retry_jitter),
            on_jobs_available=self.signal.notify,
        )
        self.scheduler = (
            MeteredScheduler(self.store, ScheduleConfig.from_settings(settings))
            if settings.scheduler_enabled
            else None
        )
        self.maintenance = Maintenance(
            self.store,
            interval=settings.reaper_interval,
            retention=RetentionPolicy(
                jobs=settings.job_retention,
                worker_runs=settings.worker_run_retention,
                batch_size=settings.prune_batch_size,
            ),
            prune_every=settings.prune_interval,
            scheduler=self.scheduler,
        )
        self.gauges = GaugeRefresher(
            self.store, self.maintenance.is_leader, settings.metrics_refresh
        )
        self.metrics = MetricsServer(settings.metrics_addr)
        background = [self.maintenance.run, self.gauges.run]
        self.listener: JobListener | None = self.store.listener(self.signal)
        if self.listener is not None:
            background.append(self.listener.run)
        servicer = QueueServicer(self.store, self.signal, settings)
        self.server = GrpcServer(
            listen_addr=settings.listen_addr,
            services=[
                ServiceRegistration(
                    SERVICE_NAME, lambda s: pb_grpc.add_QueueServiceServicer_to_server(servicer, s)
                )
            ],
            interceptors=[AuthInterceptor(settings.auth, POLICY)],
            health_probe=self.store.ping,
            tls=settings.tls,
            background=background,
            on_shutdown=[self.signal.close, servicer.close_watches],
        )

    async def start(self) -> int:
        if not self.settings.auth.jwt_secret and not self.settings.auth.trigger_secret:
            log.warning("neither JWT_SECRET nor TRIGGER_SECRET is set: every RPC will be refused")
        self.metrics.start()
        port = await self.server.start()
        if self.listener is not None:
            # Return once pickers can be woken, so a job enqueued right after start() wakes
            # them at once; but never hang on a database that is down: the listener keeps
            # reconnecting and pickers poll meanwhile.
            try:
                await asyncio.wait_for(self.listener.connected.wait(), LISTENER_START_WAIT)
            except TimeoutError:
                log.warning("LISTEN not established yet; pickers poll until it is")
        return port

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
        self.metrics.stop()
        await self.engine.dispose()

    async def run_until_signal(self) -> None:
        self.metrics.start()
        try:
            await self.server.run_until_signal(self.settings.grace_period.total_seconds())
        finally:
            self.metrics.stop()
            await self.engine.dispose()
