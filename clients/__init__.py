"""Typed clients of QueueService and SyncService (async, and blocking in `clients.blocking`),
the worker that joins them, and the `gmbsync` command line (`clients.cli`).

    async with QueueClient.connect("127.0.0.1:50051", Credentials.bearer(token)) as queue:
        answer = await queue.enqueue_sync(account_id, "full", priority=10)
        finished = await queue.wait_for_job(answer.job.id, timeout=300)

Errors are the small hierarchy of `clients.errors`; nothing gRPC-specific leaks to callers.
"""

from clients.blocking import BlockingQueueClient, BlockingSyncClient
from clients.calls import RetryPolicy
from clients.channel import Credentials, create_channel
from clients.errors import ClientError
from clients.queue import QueueClient
from clients.sync import SyncClient
from service_runtime.tls import ClientTls

__all__ = [
    "BlockingQueueClient",
    "BlockingSyncClient",
    "ClientError",
    "ClientTls",
    "Credentials",
    "QueueClient",
    "RetryPolicy",
    "SyncClient",
    "create_channel",
]
