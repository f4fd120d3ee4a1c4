"""The chaos oracle finds each defect it is there to find (no processes: rows and log lines)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from tests.chaos.oracle import (
    FaultReport,
    JobRow,
    handed_back,
    judge,
    refused_holders,
    successful_syncs,
)

A, B = str(uuid.uuid4()), str(uuid.uuid4())


def synced(job: str, attempt: int, at: str = "00:00:00") -> str:
    return (
        f"2026-01-01 {at},000 INFO sync_service.sync: synced account {uuid.uuid4()} "
        f"(full, job {job} attempt {attempt}): 1 locations (-0, 0 skipped), reviews +3 ~0 -0"
    )


def verdict(rows: list[JobRow], sync_log: list[str], worker_log: Sequence[str] = ()) -> FaultReport:
    jobs = {A, B}
    return judge(
        FaultReport(fault="test", jobs=2),
        jobs,
        rows,
        successful_syncs("\n".join(sync_log), jobs),
        refused_holders(["\n".join(worker_log)], jobs),
        handed_back(["\n".join(worker_log)], jobs),
    )


def test_a_clean_batch_has_nothing_to_report():
    report = verdict(
        [JobRow(A, "succeeded", 1, 3), JobRow(B, "succeeded", 2, 3)],
        [synced(A, 1), synced(B, 1), synced(B, 2)],
    )
    assert (report.lost, report.run_twice, report.stale_accepted) == (0, 0, 0)
    assert report.succeeded == 2
    assert report.resynced == 1  # B's first attempt synced, then its lease was lost


def test_missing_stuck_and_exhausted_jobs_are_lost():
    report = verdict([JobRow(A, "processing", 1, 3)], [])
    assert report.lost == 2  # B missing, A still processing
    assert verdict([JobRow(A, "pending", 3, 3), JobRow(B, "pending", 1, 3)], []).lost == 1


def test_one_attempt_synced_twice_or_a_sync_after_success_is_run_twice():
    assert verdict([JobRow(A, "succeeded", 1, 3)], [synced(A, 1), synced(A, 1)]).run_twice == 1
    assert verdict([JobRow(A, "succeeded", 1, 3)], [synced(A, 1), synced(A, 2)]).run_twice == 1


def test_a_released_attempt_synced_again_is_a_resync_not_a_double_run():
    report = verdict(
        [JobRow(A, "succeeded", 1, 3)],
        [synced(A, 1), synced(A, 1)],
        [f"WARNING clients.worker.job: job {A}: SyncService unreachable (x); handing it back"],
    )
    assert (report.run_twice, report.resynced) == (0, 1)


def test_success_under_an_attempt_no_sync_completed_is_a_stale_completion():
    assert verdict([JobRow(A, "succeeded", 2, 3)], [synced(A, 1)]).stale_accepted == 1


def test_success_accepted_before_its_attempt_synced_is_a_stale_completion():
    # Attempt 1's holder completed (accepted at 00:00:05) while attempt 2 held the lease; attempt
    # 2's sync ended later, at 00:00:09.
    accepted = datetime(2026, 1, 1, 0, 0, 5).astimezone()
    rows = [JobRow(A, "succeeded", 2, 3, accepted)]
    late = verdict(rows, [synced(A, 1, "00:00:01"), synced(A, 2, "00:00:09")])
    assert late.stale_accepted == 1
    in_time = verdict(rows, [synced(A, 1, "00:00:01"), synced(A, 2, "00:00:04")])
    assert in_time.stale_accepted == 0


def test_refused_late_holders_are_counted_once_per_job():
    report = verdict(
        [JobRow(A, "succeeded", 2, 3)],
        [synced(A, 2)],
        [
            f"WARNING clients.worker.lease: job {A}: lease lost (job {A} is pending and ...)",
            f"ERROR clients.worker.reporter: job {A}: CompleteJob refused: FAILED_PRECONDITION x",
        ],
    )
    assert report.stale_refused == 1
