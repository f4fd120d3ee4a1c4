"""Typed async clients of QueueService and SyncService, and the worker that joins them.

    async with QueueClient.connect("127.0.0.1:50051", Credentials.bearer(token)) as queue:
        answer = await queue.enqueue_sync(account_id, "full", priority=10)

Errors are the small hierarchy of `clients.errors`; nothing gRPC-specific leaks to callers.
"""

from clients.calls import RetryPolicy
from clients.channel import Credentials, create_channel
from clients.errors import ClientError
from clients.queue import QueueClient
from clients.sync import SyncClient
from service_runtime.tls import ClientTls

__all__ = [
    "ClientError",
    "ClientTls",
    "Credentials",
    "QueueClient",
    "RetryPolicy",
    "SyncClient",
    "create_channel",
]
