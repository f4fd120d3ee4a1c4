"""The shortest path through the queue: enqueue, pick, complete."""

from __future__ import annotations

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import WORKER_METADATA


async def test_enqueue_pick_complete(queue):
    account = await queue.add_account()
    job = await queue.enqueue(account)
    assert job.status == pb.JOB_STATUS_PENDING
    [picked] = await queue.pick()
    assert picked.id == job.id
    assert picked.lease_token
    done = await queue.stub.CompleteJob(
        pb.CompleteJobRequest(job_id=picked.id, lease_token=picked.lease_token),
        metadata=WORKER_METADATA,
    )
    assert done.job.status == pb.JOB_STATUS_SUCCEEDED
