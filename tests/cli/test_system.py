"""The CLI and the blocking client over the whole system: accounts through SyncService, a real
worker syncing the emulator, and the typed result of the finished job."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from clients import Credentials
from clients import errors as client_errors
from clients.blocking import BlockingQueueClient, BlockingSyncClient
from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.auth import Role
from tests.cli.conftest import run_cli, token_for
from tests.conftest import ADMIN_USER
from tests.e2e.conftest import OWNER, System


def env_of(system: System, token: str) -> dict[str, str]:
    return {"QUEUE_ADDR": system.queue_addr, "SYNC_ADDR": system.sync_addr, "GMBSYNC_TOKEN": token}


async def test_accounts_connect_enqueue_wait_and_show_the_typed_result(system: System):
    admin = env_of(system, token_for(ADMIN_USER, Role.ADMIN))
    connected = await run_cli(
        "accounts",
        "connect",
        "--user",
        str(OWNER),
        "--name",
        "CLI Bakery",
        "--google-account",
        "accounts/2",
        "--refresh-token",
        "emulator-refresh-token-2",
        "--json",
        env=admin,
    )
    assert connected.code == 0, connected.stderr
    account = connected.json()["account"]
    assert account["account_name"] == "CLI Bakery"
    assert "refresh_token" not in connected.stdout

    owner = env_of(system, token_for(OWNER))
    listed = await run_cli("accounts", "list", "--json", env=owner)
    assert [a["id"] for a in listed.json()["accounts"]] == [account["id"]]
    table = await run_cli("accounts", "list", env=owner)
    assert "CLI Bakery" in table.stdout and "accounts/2" in table.stdout

    system.start_worker()
    waited = await run_cli(
        "enqueue", account["id"], "--full", "--wait", "--wait-timeout", "60", "--json", env=owner
    )
    assert waited.code == 0, waited.stderr
    job = waited.json()["job"]
    assert job["status"] == "JOB_STATUS_SUCCEEDED"
    typed = job["sync_result"]
    assert typed["locations_synced"] == 2  # the emulator's 2 locations per account
    assert typed["reviews_added"] == 10 and isinstance(typed["reviews_added"], int)
    assert typed["api_calls"] > 0

    shown = await run_cli("jobs", "show", job["id"], env=owner)
    assert "reviews added" in shown.stdout and "10" in shown.stdout

    status = await run_cli("status", "--account", account["id"], "--json", env=owner)
    assert status.code == 0, status.stderr
    assert status.json()["status"]["reviews_count"] == 10


async def test_blocking_clients_enqueue_and_wait_from_another_thread(system: System):
    account_id = await system.connect_account(3)
    system.start_worker()
    credentials = Credentials.bearer(token_for(OWNER))

    def script() -> pb.Job:
        # What a user's script does: no asyncio in sight.
        with BlockingSyncClient.connect(system.sync_addr, credentials) as sync:
            accounts = sync.list_accounts().accounts
            assert [a.id for a in accounts] == [account_id]
        with BlockingQueueClient.connect(system.queue_addr, credentials) as queue:
            answer = queue.enqueue_sync(account_id, "full", priority=10)
            changes = [j.status for j in queue.watch_job(answer.job.id, timeout=60)]
            assert changes[-1] == pb.JOB_STATUS_SUCCEEDED
            return queue.wait_for_job(answer.job.id, timeout=60)

    job = await asyncio.to_thread(script)
    assert job.status == pb.JOB_STATUS_SUCCEEDED
    assert job.sync_result.reviews_added == 10
    assert isinstance(job.sync_result.reviews_added, int)


async def test_blocking_client_raises_the_async_clients_errors(system: System):
    credentials = Credentials.bearer(token_for(uuid.uuid4()))

    def script() -> None:
        with BlockingQueueClient.connect(system.queue_addr, credentials) as queue:
            with pytest.raises(client_errors.NotFound):
                queue.get_job(str(uuid.uuid4()))
            with pytest.raises(client_errors.InvalidArgument) as caught:
                queue.enqueue_sync("nope", "full")
            assert [v.field for v in caught.value.violations] == ["account_id"]
            with pytest.raises(client_errors.PermissionDenied):
                queue.get_diagnostics()

    await asyncio.to_thread(script)


def test_blocking_client_to_nothing_is_unavailable_and_closes_cleanly(dead_address: str):
    queue = BlockingQueueClient.connect(dead_address, Credentials.none(), timeout=2)
    try:
        with pytest.raises(client_errors.Unavailable):
            queue.get_queue_status()
        with pytest.raises(client_errors.Unavailable):
            queue.wait_ready(0.2)
    finally:
        queue.close()
    queue.close()  # twice is harmless
