"""Reads of one statement (GetJob, ListJobs) run outside a transaction on PostgreSQL: no BEGIN
before them and no ROLLBACK after, two round trips fewer per call. The open watches' read of
many jobs by id."""

from __future__ import annotations

import uuid

import psycopg
from sqlalchemy import event

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.readmodel import JOBS_BY_ID_CHUNK
from tests.conftest import WORKER_METADATA


async def test_get_job_and_list_jobs_read_in_autocommit(pg_queue):
    job = await pg_queue.enqueue(await pg_queue.add_account())
    statuses: list[psycopg.pq.TransactionStatus] = []

    def after_execute(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            statuses.append(conn.connection.dbapi_connection.info.transaction_status)

    engine = pg_queue.app.engine.sync_engine
    event.listen(engine, "after_cursor_execute", after_execute)
    try:
        await pg_queue.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=WORKER_METADATA)
        await pg_queue.stub.ListJobs(pb.ListJobsRequest(page_size=5), metadata=WORKER_METADATA)
    finally:
        event.remove(engine, "after_cursor_execute", after_execute)

    assert statuses
    # IDLE after the statement: it ran in no transaction (INTRANS: one was opened for it).
    assert set(statuses) == {psycopg.pq.TransactionStatus.IDLE}


async def test_jobs_by_id_reads_any_number_of_ids_and_leaves_out_the_missing(queue):
    # The reads of open watches: more ids than one statement takes (JOBS_BY_ID_CHUNK).
    jobs = [await queue.enqueue(await queue.add_account()) for _ in range(3)]
    wanted = [uuid.UUID(j.id) for j in jobs]
    missing = [uuid.uuid4() for _ in range(2 * JOBS_BY_ID_CHUNK)]

    found = await queue.app.store.reader.jobs_by_id([*missing[:700], *wanted, *missing[700:]])

    assert sorted(found) == sorted(wanted)
    assert {str(job.id): job.account_id for job in found.values()} == {
        j.id: uuid.UUID(j.account_id) for j in jobs
    }
