"""A sync runs end to end over mutual TLS: worker -> QueueService -> SyncService -> emulator."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from clients import Credentials, QueueClient, SyncClient
from clients.queue import JobStatus
from clients.worker import Worker
from clients.worker.config import load_config
from queue_service.app import QueueApp
from sync_service.app import SyncApp
from sync_service.emulator import EmulatorServer
from tests.conftest import TEST_TRIGGER_SECRET
from tests.e2e.conftest import AUTH, OWNER, eventually, free_port, sync_settings
from tests.queue.conftest import queue_settings
from tests.tls.conftest import Pki

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")


async def test_a_job_runs_to_success_with_every_hop_over_mutual_tls(pki: Pki, pg_url: str) -> None:
    emulator = EmulatorServer(seed=3, accounts=1, locations_per_account=1, reviews_per_location=2)
    await emulator.start()
    queue_app = QueueApp(
        queue_settings(
            pg_url,
            AUTH,
            tls=pki.server_tls(mutual=True, prefix="QUEUE"),
            default_lease=timedelta(seconds=30),
        )
    )
    queue_addr = f"127.0.0.1:{await queue_app.start()}"
    sync_port = free_port()
    sync_app = SyncApp(
        dataclasses.replace(
            sync_settings(pg_url, emulator.url, sync_port),
            tls=pki.server_tls(mutual=True, prefix="SYNC"),
        )
    )
    await sync_app.start()
    sync_addr = f"127.0.0.1:{sync_port}"
    # The worker as `python -m clients.worker` would configure it, from its environment.
    config = load_config(
        ["--poll-wait", "1s"],
        {
            "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
            "QUEUE_ADDR": queue_addr,
            "SYNC_ADDR": sync_addr,
            "GRPC_TLS_CA_FILE": str(pki.ca.cert_file),
            "GRPC_TLS_CERT_FILE": str(pki.client.cert_file),
            "GRPC_TLS_KEY_FILE": str(pki.client.key_file),
        },
    )
    tls = pki.client_tls(certificate=pki.client)
    credentials = Credentials.trigger_secret(TEST_TRIGGER_SECRET)
    queue = QueueClient.connect(queue_addr, credentials, tls=tls)
    sync = SyncClient.connect(sync_addr, credentials, tls=tls)
    worker: Worker | None = None
    running: asyncio.Task[object] | None = None
    try:
        account = await sync.connect_account(
            user_id=str(OWNER),
            account_name="TLS Business",
            google_account_id="accounts/1",
            refresh_token="emulator-refresh-token-1",
        )
        enqueued = await queue.enqueue_sync(account.account.id, "full")
        worker = Worker(config)
        running = asyncio.create_task(worker.run())

        done = await eventually(
            lambda: queue.get_job(enqueued.job.id),
            lambda job: job.status == SUCCEEDED,
            what="the job to succeed over TLS",
        )

        assert done.attempts == 1
        assert done.result["reviews_added"] == 2
    finally:
        if worker is not None and running is not None:
            worker.request_stop("test finished")
            await running
        await queue.close()
        await sync.close()
        await sync_app.stop(grace=0.5)
        await queue_app.stop(grace=0.5)
        await emulator.stop()
