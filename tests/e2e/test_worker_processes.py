"""Real worker processes and signals: SIGTERM loses nothing; SIGKILL's job runs elsewhere."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from clients.queue import JobStatus
from tests.e2e.conftest import System, eventually, wait_process

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")
PENDING = JobStatus.Value("JOB_STATUS_PENDING")
PROCESSING = JobStatus.Value("JOB_STATUS_PROCESSING")


async def _mid_job(system: System, job_id: str, worker_id: str) -> None:
    """Waits until `worker_id` holds the job and its sync is waiting on Google."""
    await system.wait_for_job(
        job_id,
        lambda j: j.status == PROCESSING and j.worker_id == worker_id,
        what=f"{worker_id} to hold the job",
    )

    async def location_calls() -> int:
        return system.emulator.state.stats.requests["locations"]

    await eventually(location_calls, lambda n: n >= 1, what="the sync to reach Google")


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def test_sigterm_after_the_grace_period_hands_the_job_back_without_losing_an_attempt(
    system: System, tmp_path: Path
) -> None:
    account_id = await system.connect_account(1)
    system.emulator.state.inject("latency", endpoint="locations", latency=5.0)
    job = await system.enqueue(account_id)
    log_path = tmp_path / "worker.log"
    worker = system.spawn_worker(log_path, WORKER_ID="sigterm-worker", SHUTDOWN_GRACE="200ms")
    await _mid_job(system, job.id, "sigterm-worker")

    worker.send_signal(signal.SIGTERM)

    assert await wait_process(worker) == 0, _log(log_path)
    handed_back = await system.job(job.id)
    assert handed_back.status == PENDING
    assert handed_back.attempts == 0
    assert not handed_back.errors
    run = await system.scalar(
        "SELECT json_build_array(status, jobs_picked, jobs_released, finished_at IS NOT NULL)"
        " FROM sync_worker_runs WHERE worker_id = 'sigterm-worker'"
    )
    assert run == ["completed", 1, 1, True]

    system.emulator.state.clear_faults()
    system.start_worker()
    done = await system.wait_for_status(job.id, SUCCEEDED)
    assert done.attempts == 1


async def test_sigterm_lets_an_in_flight_job_finish_within_the_grace_period(
    system: System, tmp_path: Path
) -> None:
    account_id = await system.connect_account(1)
    system.emulator.state.inject("latency", endpoint="locations", latency=1.5)
    job = await system.enqueue(account_id)
    log_path = tmp_path / "worker.log"
    worker = system.spawn_worker(log_path, WORKER_ID="graceful-worker", SHUTDOWN_GRACE="60s")
    await _mid_job(system, job.id, "graceful-worker")

    worker.send_signal(signal.SIGTERM)

    assert await wait_process(worker) == 0, _log(log_path)
    done = await system.job(job.id)
    assert done.status == SUCCEEDED
    assert done.attempts == 1
    run = await system.scalar(
        "SELECT json_build_array(status, jobs_picked, jobs_succeeded, jobs_released)"
        " FROM sync_worker_runs WHERE worker_id = 'graceful-worker'"
    )
    assert run == ["completed", 1, 1, 0]


async def test_a_job_of_a_killed_worker_is_run_by_another_after_its_lease_expires(
    system: System, tmp_path: Path
) -> None:
    account_id = await system.connect_account(1)
    system.emulator.state.inject("latency", endpoint="locations", latency=30.0)
    job = await system.enqueue(account_id)
    doomed = system.spawn_worker(tmp_path / "doomed.log", WORKER_ID="doomed-worker")
    await _mid_job(system, job.id, "doomed-worker")

    doomed.send_signal(signal.SIGKILL)
    assert await wait_process(doomed) == -signal.SIGKILL
    system.emulator.state.clear_faults()
    survivor = system.start_worker(worker_id="survivor-worker")

    done = await system.wait_for_status(job.id, SUCCEEDED)

    assert done.worker_id == survivor.config.worker_id
    assert done.attempts == 2  # the lost attempt counts: the job did start once


async def test_once_runs_a_batch_records_the_run_and_exits(system: System, tmp_path: Path) -> None:
    first = await system.enqueue(await system.connect_account(1))
    second = await system.enqueue(await system.connect_account(2))
    log_path = tmp_path / "once.log"
    worker = system.spawn_worker(
        log_path,
        WORKER_ID="cron-worker",
        WORKER_ONCE="true",
        MAX_JOBS_PER_RUN="5",
        WORKER_TIMEOUT="50s",
        JOB_TIMEOUT="20s",
        WORKER_CONCURRENCY="2",
        LOG_LEVEL="WARNING",
    )

    assert await wait_process(worker) == 0, _log(log_path)

    summary = json.loads(_log(log_path).strip().splitlines()[-1])
    assert summary["success"] is True
    assert (summary["jobs_picked"], summary["jobs_succeeded"], summary["jobs_failed"]) == (2, 2, 0)
    for job in (first, second):
        assert (await system.job(job.id)).status == SUCCEEDED
    status = await system.scalar(
        "SELECT status FROM sync_worker_runs WHERE id = :r", r=summary["run_id"]
    )
    assert status == "completed"
