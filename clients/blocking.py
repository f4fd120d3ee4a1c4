"""Blocking (synchronous) clients of QueueService and SyncService, for scripts and the CLI.

    with BlockingQueueClient.connect("127.0.0.1:50051", Credentials.bearer(token)) as queue:
        job = queue.enqueue_sync(account_id, "full").job
        done = queue.wait_for_job(job.id, timeout=300)
        print(done.sync_result.reviews_added)

Each blocking client owns a private event loop on a daemon thread, where the async client it
wraps lives (its channel, retries, error translation: one implementation of each, not two).
A method runs the async method of the same name on that loop and waits for its answer, so the
blocking clients work from any thread, from a program that has an event loop of its own (a
notebook), and raise the same `clients.errors` exceptions as the async ones. Ctrl-C while
waiting cancels the call in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from clients.calls import RetryPolicy, ServiceClient
from clients.channel import Credentials
from clients.queue import Job, QueueClient
from clients.sync import SyncClient
from service_runtime.tls import ClientTls

P = ParamSpec("P")
R = TypeVar("R")
AsyncClient = TypeVar("AsyncClient", bound=ServiceClient)

DEFAULT_RETRY = RetryPolicy()


class _LoopThread:
    """A private event loop running on a daemon thread until `stop()`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        """Runs `coroutine` on the loop and waits for its result (or its exception)."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking client cannot be called from its own event loop")
        # The answer exists before the call is handed to the loop, so a Ctrl-C at any instant
        # from here on finds it and cancels the call. (`asyncio.run_coroutine_threadsafe` makes
        # its future inside, where a Ctrl-C landing just after the hand-over left the call
        # running with nothing to cancel it by.)
        answer: concurrent.futures.Future[R] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(_start, coroutine, answer)
            return answer.result()
        except BaseException:
            # KeyboardInterrupt (or any exit) while waiting: do not leave the call running.
            answer.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _start(coroutine: Coroutine[Any, Any, R], answer: concurrent.futures.Future[R]) -> None:
    """On the loop: runs `coroutine` as a task whose outcome settles `answer`, and which a
    cancelled `answer` cancels (or never starts, if the caller gave up first)."""
    if answer.cancelled():
        coroutine.close()
        return
    task = asyncio.ensure_future(coroutine)
    loop = task.get_loop()

    def cancel_task(_: concurrent.futures.Future[R]) -> None:
        if answer.cancelled():
            loop.call_soon_threadsafe(task.cancel)

    def settle(_: asyncio.Task[R]) -> None:
        if task.cancelled():
            answer.cancel()
            return
        # False if the caller cancelled meanwhile: then nobody waits for the outcome.
        if not answer.set_running_or_notify_cancel():
            return
        if (error := task.exception()) is not None:
            answer.set_exception(error)
        else:
            answer.set_result(task.result())

    answer.add_done_callback(cancel_task)
    task.add_done_callback(settle)


def _blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[BlockingClient[Any], P], R]:
    """The blocking twin of an async client method: same arguments, same answer, same errors."""

    @functools.wraps(method)
    def call(self: BlockingClient[Any], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.run(method(self._client, *args, **kwargs))

    return call


class BlockingClient(Generic[AsyncClient]):
    """What both blocking clients share: the loop thread, connecting and closing."""

    _async_type: type[ServiceClient] = ServiceClient

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        tracing: bool = True,
        tls: ClientTls | None = None,
    ) -> None:
        self._loop = _LoopThread(f"gmbsync-{type(self).__name__}")

        async def connect() -> AsyncClient:
            # grpc.aio binds a channel to the loop it is made on: make it on ours.
            return self._async_type.connect(  # type: ignore[return-value]
                target, credentials, timeout=timeout, retry=retry, tracing=tracing, tls=tls
            )

        try:
            self._client: AsyncClient = self._loop.run(connect())
        except BaseException:
            self._loop.stop()
            raise

    @classmethod
    def connect(
        cls,
        target: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        tracing: bool = True,
        tls: ClientTls | None = None,
    ) -> Self:
        """A client on a channel of its own to `host:port`, TLS with `tls` (as the async
        clients' `connect`)."""
        return cls(target, credentials, timeout=timeout, retry=retry, tracing=tracing, tls=tls)

    @property
    def async_client(self) -> AsyncClient:
        """The wrapped async client (it lives on this client's own event loop)."""
        return self._client

    def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; Unavailable if it is not within `timeout` s."""
        self._loop.run(self._client.wait_ready(timeout))

    def close(self) -> None:
        """Closes the channel and stops the loop thread; the client is unusable afterwards."""
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self._client.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()


class BlockingQueueClient(BlockingClient[QueueClient]):
    """Blocking client of gmbsync.queue.v1.QueueService: every method of `QueueClient`."""

    _async_type = QueueClient

    enqueue_sync = _blocking(QueueClient.enqueue_sync)
    enqueue_sync_batch = _blocking(QueueClient.enqueue_sync_batch)
    get_job = _blocking(QueueClient.get_job)
    list_jobs = _blocking(QueueClient.list_jobs)
    get_queue_status = _blocking(QueueClient.get_queue_status)
    cancel_job = _blocking(QueueClient.cancel_job)
    retry_job = _blocking(QueueClient.retry_job)
    wait_for_job = _blocking(QueueClient.wait_for_job)
    pick_jobs = _blocking(QueueClient.pick_jobs)
    extend_lease = _blocking(QueueClient.extend_lease)
    complete_job = _blocking(QueueClient.complete_job)
    fail_job = _blocking(QueueClient.fail_job)
    release_job = _blocking(QueueClient.release_job)
    report_results = _blocking(QueueClient.report_results)
    start_worker_run = _blocking(QueueClient.start_worker_run)
    finish_worker_run = _blocking(QueueClient.finish_worker_run)
    mark_stale_jobs = _blocking(QueueClient.mark_stale_jobs)
    get_diagnostics = _blocking(QueueClient.get_diagnostics)
    get_sync_schedule = _blocking(QueueClient.get_sync_schedule)
    set_sync_schedule = _blocking(QueueClient.set_sync_schedule)
    pause_queue = _blocking(QueueClient.pause_queue)
    resume_queue = _blocking(QueueClient.resume_queue)

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job now, then again at each change, ending after it is finished (WatchJob).

        Breaking out of the loop early hangs up the stream.
        """
        stream = self._client.watch_job(job_id, timeout=timeout)

        async def next_job() -> Job | None:
            return await anext(stream, None)

        async def hang_up() -> None:
            await stream.aclose()  # type: ignore[attr-defined]

        try:
            while (job := self._loop.run(next_job())) is not None:
                yield job
        finally:
            if not self._loop.loop.is_closed():
                self._loop.run(hang_up())


class BlockingSyncClient(BlockingClient[SyncClient]):
    """Blocking client of gmbsync.sync.v1.SyncService: every method of `SyncClient`."""

    _async_type = SyncClient

    sync_account = _blocking(SyncClient.sync_account)
    get_sync_status = _blocking(SyncClient.get_sync_status)
    get_sync_status_details = _blocking(SyncClient.get_sync_status_details)
    discover_accounts = _blocking(SyncClient.discover_accounts)
    connect_account = _blocking(SyncClient.connect_account)
    list_accounts = _blocking(SyncClient.list_accounts)


__all__ = ["BlockingClient", "BlockingQueueClient", "BlockingSyncClient"]
