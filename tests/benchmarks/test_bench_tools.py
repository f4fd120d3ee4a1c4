"""The benchmark's own parts: the raw statements it holds the queue against must change rows as
the queue does (else its "PostgreSQL alone" column measures something else), the stand-in
SyncService must answer what the worker takes as a success, and the processes it starts must
not outlive it. Speed itself is never asserted here (that is what `make bench` reports).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest

from benchmarks.harness import (
    ROOT,
    Processes,
    free_port,
    process_tree,
    rss_summary,
    tree_cpu,
    wait_for_port,
)
from benchmarks.rawsql import RAW_CHANNEL, RESULT_JSON, RawQueue, libpq_url, percentiles_ms
from benchmarks.report import Row, render_markdown, render_text
from benchmarks.seed import Seeder
from clients.worker.job import sync_result
from gmbsync.sync.v1 import sync_service_pb2 as spb
from gmbsync.sync.v1 import sync_service_pb2_grpc as spb_grpc

pytestmark = pytest.mark.postgres_only


def _rows(url: str, sql: str, params: object = None) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


async def test_raw_enqueue_creates_one_active_job_per_active_account_and_notifies(
    pg_url: str,
) -> None:
    seed = Seeder(pg_url)
    active = seed.accounts(3, [uuid.uuid4()])
    seed.execute("UPDATE gmb_accounts SET is_active = false WHERE id = %s", (active[2],))
    raw = RawQueue(pg_url)
    listener, conn = await raw.connect(2)
    try:
        await listener.execute(f"LISTEN {RAW_CHANNEL}")
        assert await raw.enqueue_one(conn, active[0]) == 1
        # A second job for an account with an active one is skipped, as the partial unique
        # index has the queue do; a deactivated account gets none.
        assert await raw.enqueue_one(conn, active[0]) == 0
        assert await raw.enqueue_one(conn, active[2]) == 0
        assert await raw.enqueue_many(conn, active) == 1
        heard = [n async for n in listener.notifies(timeout=2.0, stop_after=4)]
        assert {n.channel for n in heard} == {RAW_CHANNEL}
        assert await raw.enqueue_one(conn, active[1], notify=False) == 0
    finally:
        await raw.close([listener, conn])
    jobs = _rows(
        pg_url,
        "SELECT account_id::text, status, attempts, max_attempts, sync_type FROM sync_queue",
    )
    assert sorted(jobs) == sorted(
        [(active[0], "pending", 0, 3, "full"), (active[1], "pending", 0, 3, "full")]
    )


async def test_raw_pick_and_complete_lease_fence_and_count_as_the_queue_does(pg_url: str) -> None:
    seed = Seeder(pg_url)
    accounts = seed.accounts(5, [uuid.uuid4()])
    assert seed.pending_jobs(accounts) == 5
    # A job whose attempts are used up is never picked; a higher priority goes first.
    seed.execute("UPDATE sync_queue SET attempts = 3 WHERE account_id = %s", (accounts[4],))
    seed.execute("UPDATE sync_queue SET priority = 10 WHERE account_id = %s", (accounts[3],))
    raw = RawQueue(pg_url)
    (conn,) = await raw.connect(1)
    try:
        run_id = await raw.start_run(conn, "raw-test")
        picked = await raw.pick(conn, 2, "raw-test-worker", run_id)
        assert len(picked) == 2
        assert str(accounts[3]) in {str(job[1]) for job in picked}
        rest = await raw.pick(conn, 10, "raw-test-worker", run_id)
        assert len(rest) == 2  # the used-up job stays pending
        assert await raw.pick(conn, 10, "raw-test-worker", run_id) == []

        first = picked[0]
        forged = (first[0], *first[1:5], uuid.uuid4())
        assert await raw.complete(conn, [forged]) == 0  # a wrong lease token changes nothing
        assert await raw.complete(conn, [first]) == 1
        assert await raw.complete(conn, [first]) == 0  # and only once
        assert await raw.complete(conn, [*picked[1:], *rest]) == 3
    finally:
        await conn.close()

    rows = _rows(
        pg_url,
        "SELECT status, attempts, lease_token IS NULL, lease_expires_at IS NULL,"
        " started_at IS NOT NULL, completed_at IS NOT NULL, worker_id, result::text"
        " FROM sync_queue WHERE status = 'succeeded'",
    )
    assert len(rows) == 4
    for status, attempts, no_token, no_expiry, started, completed, worker, result in rows:
        assert (status, attempts, no_token, no_expiry, started, completed, worker) == (
            "succeeded",
            1,
            True,
            True,
            True,
            True,
            "raw-test-worker",
        )
        assert json.loads(str(result)) == json.loads(RESULT_JSON)
    counts = _rows(
        pg_url,
        "SELECT jobs_picked, jobs_processed, jobs_succeeded FROM sync_worker_runs WHERE id = %s",
        (run_id,),
    )
    assert counts == [(4, 4, 4)]


async def test_raw_drain_and_enqueue_to_start_account_for_every_job(pg_url: str) -> None:
    seed = Seeder(pg_url)
    accounts = seed.accounts(40, [uuid.uuid4()])
    seed.pending_jobs(accounts[:30])
    raw = RawQueue(pg_url)
    drained = await raw.drain(pick=4, complete_together=False, connections=2)
    assert drained.units == 30
    assert drained.connections == 2
    assert _rows(pg_url, "SELECT count(*) FROM sync_queue WHERE status <> 'succeeded'") == [(0,)]

    seed.truncate_jobs()
    pairs = await raw.enqueue_to_start(accounts[30:], rate=200.0)
    # Every job was picked and stamped (a pick's time is read before its statement runs, so
    # the two stamps are not ordered: no assertion on their difference).
    assert len(pairs) == 10
    assert all(created is not None and started is not None for created, started in pairs)


async def test_the_stand_in_sync_service_answers_what_the_worker_counts_as_success(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with Processes(tmp_path) as procs:
        fake = await procs.start(
            "fake-sync",
            [sys.executable, "-m", "benchmarks.fake_sync", "--port", str(port)],
            {**os.environ, "PYTHONPATH": str(ROOT)},
        )
        await wait_for_port(port, fake)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = spb_grpc.SyncServiceStub(channel)
            reply = await stub.SyncAccount(
                spb.SyncAccountRequest(account_id=str(uuid.uuid4()), sync_type=spb.SYNC_TYPE_FULL),
                timeout=10,
            )
            assert reply == spb.SyncAccountResponse()
            assert sync_result(reply)["reviews_added"] == 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListAccounts(spb.ListAccountsRequest(), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert not fake.running


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever inherited it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_children_do_not_outlive_a_benchmark_that_is_killed(tmp_path: Path) -> None:
    """A benchmark killed with SIGKILL runs no cleanup: the kernel must stop its children."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from benchmarks.harness import Processes\n"
        "async def main():\n"
        "    procs = Processes(Path(sys.argv[1]))\n"
        "    child = await procs.start('sleeper', [sys.executable, '-c',"
        " 'import time; time.sleep(600)'], {})\n"
        "    print(child.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    bench = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bench.stdout is not None
        child = int(bench.stdout.readline())
        assert _alive(child)
        bench.send_signal(signal.SIGKILL)
        bench.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not _alive(child):
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the child outlived the killed benchmark")
    finally:
        if bench.poll() is None:
            bench.kill()


def test_a_service_is_measured_with_the_processes_it_starts() -> None:
    """A supervisor (QueueService with several processes) is counted with its children."""
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert set(process_tree(parent.pid)) == {parent.pid, child}
        assert set(tree_cpu(parent.pid)) == {parent.pid, child}
        assert process_tree(child) == [child]
    finally:
        for pid in process_tree(parent.pid)[::-1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)


def test_ratios_read_as_a_share_of_postgresql_alone() -> None:
    rate = Row("1", "drain", 250.0, "jobs/s", limit=1000.0)
    latency = Row("3", "p50", 8.0, "ms", limit=2.0, higher_is_better=False)
    assert rate.ratio == pytest.approx(0.25)
    assert latency.ratio == pytest.approx(0.25)
    assert Row("5", "idle", 3.0, "/s").ratio is None
    assert Row("2", "none", 0.0, "jobs/s", limit=5.0).ratio is None
    text = render_text([rate, latency])
    assert "25.0 %" in text and "1,000 jobs/s" in text
    markdown = render_markdown([Row("6", "p50", 1.2, "x", target="<= 1.5x|")])
    assert markdown.splitlines()[2] == "| 6 | p50 | 1.20 x | - | - | <= 1.5x\\| |"


def test_memory_growth_compares_the_first_and_last_quarters() -> None:
    flat = rss_summary([100 * 2**20] * 8 + [103 * 2**20] * 4)
    assert flat["peak_mib"] == 103.0
    assert not flat["grew"]
    growing = rss_summary([(100 + 5 * n) * 2**20 for n in range(12)])
    assert growing["grew"] and growing["start_mib"] == 100.0 and growing["end_mib"] == 155.0
    assert rss_summary([]) == {}


def test_percentiles_are_in_milliseconds() -> None:
    stats = percentiles_ms([0.001 * n for n in range(1, 101)])
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["max_ms"] == pytest.approx(100.0)
    assert percentiles_ms([0.002]) == {"p50_ms": 2.0, "p99_ms": 2.0, "max_ms": 2.0}
