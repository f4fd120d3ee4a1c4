"""An operator's error log holds only real errors: streams and long polls that clients abandon,
and a shutdown, log nothing at ERROR (in particular no "Failed to detach context" from
OpenTelemetry), and Health.Watch works under tracing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service import servicer
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue

ABANDONED_STREAMS = 30


async def abandon_reflection_stream(address: str) -> None:
    """Asks reflection for many descriptors and hangs up while the answers are being written:
    what grpcurl does when it is interrupted, or exits as soon as it has what it wanted."""
    channel = grpc.aio.insecure_channel(address)
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    for _ in range(20):
        await call.write(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="gmbsync.queue.v1.QueueService"
            )
        )
    await call.read()
    await channel.close(grace=None)


def error_records(caplog) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_reflection_streams_abandoned_mid_answer_log_no_error(
    sqlite_url, auth_settings, caplog
):
    caplog.set_level(logging.WARNING)
    running = await start_queue(queue_settings(sqlite_url, auth_settings))
    try:
        for _ in range(ABANDONED_STREAMS):
            await abandon_reflection_stream(running.address)
            # A stream left suspended is closed by the garbage collector, from whatever task
            # happens to run it: collect now, as a busy server eventually would.
            gc.collect()
            await asyncio.sleep(0.01)
    finally:
        await stop_queue(running)
    gc.collect()
    await asyncio.sleep(0.05)

    assert error_records(caplog) == []


async def test_health_watch_answers_under_tracing(sqlite_url, auth_settings, caplog):
    caplog.set_level(logging.WARNING)
    running = await start_queue(queue_settings(sqlite_url, auth_settings))
    try:
        health = health_pb2_grpc.HealthStub(running.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        watch.cancel()
    finally:
        await stop_queue(running)

    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert error_records(caplog) == []


async def test_long_polls_cut_short_by_deadline_cancel_or_shutdown_log_no_error(
    sqlite_url, auth_settings, caplog, monkeypatch
):
    caplog.set_level(logging.WARNING)
    # The server answers 2.5 s before a 3 s deadline: a margin no load on the machine eats.
    monkeypatch.setattr(servicer, "PICK_DEADLINE_MARGIN", timedelta(seconds=2.5))
    running = await start_queue(queue_settings(sqlite_url, auth_settings))
    five_seconds = duration_pb2.Duration(seconds=5)
    # A long poll still waiting when the server stops (on a channel of its own, which the
    # test's shutdown does not close first).
    own_channel = grpc.aio.insecure_channel(running.address)
    try:
        cancelled = running.stub.PickJobs(
            pb.PickJobsRequest(worker_id="w", wait=five_seconds), metadata=WORKER_METADATA
        )
        timed_out = running.stub.PickJobs(
            pb.PickJobsRequest(worker_id="w", wait=five_seconds),
            metadata=WORKER_METADATA,
            timeout=3.0,
        )
        at_shutdown = pb_grpc.QueueServiceStub(own_channel).PickJobs(
            pb.PickJobsRequest(worker_id="w", wait=five_seconds), metadata=WORKER_METADATA
        )
        # The server answers (empty) before the caller's deadline.
        assert (await timed_out).jobs == []
        # By now the first long poll is waiting in the server: the client gives up on it.
        cancelled.cancel()
    finally:
        await stop_queue(running)
    assert (await at_shutdown).jobs == []
    await own_channel.close()
    gc.collect()
    await asyncio.sleep(0.05)

    assert error_records(caplog) == []
