"""What a fault did to a batch of jobs, judged from three independent records.

- The queue's rows (`sync_queue`): each job's final status, attempts and max_attempts.
- SyncService's log: every sync that succeeded says `synced account A (..., job J attempt N`,
  written before the answer leaves, so a sync a worker was told about is always in it.
- The workers' logs: a completion or heartbeat refused because the lease was gone.

A job is **lost** if it is missing, still processing once the system has drained, or pending
with no attempt left. A job **ran twice** if one attempt (one lease) synced more than once, or a
sync succeeded under a later attempt than the one whose completion was accepted (the job ran
again after it had succeeded). A **stale completion was accepted** if a job succeeded under an
attempt (its `attempts` at the end) that no sync had succeeded in by the time the completion was
accepted (`completed_at`, the same host's clock as the log): the completion came from a holder
whose lease had moved on to that attempt.
Syncs of an attempt that was then lost (the worker died or froze after Google answered), and a
second sync under an attempt number a release gave back (the worker could not reach SyncService
and released the job, which does not spend an attempt), are counted as `resynced`: the price of
at-least-once delivery under leases, one after the other, never beside each other.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# The log line's time (logging's asctime: local time, milliseconds cut off, so never later than
# the moment the line was written), the job and the attempt.
SYNCED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?"
    r"synced account \S+ \(\w+, job ([0-9a-f-]{36}) attempt (\d+)",
    re.MULTILINE,
)
HANDED_BACK = re.compile(r"job ([0-9a-f-]{36}): .*handing it back")
REFUSED = re.compile(
    r"job ([0-9a-f-]{36}): (?:lease lost|\w+ refused: FAILED_PRECONDITION)", re.IGNORECASE
)
ACTIVE = {"pending", "processing"}
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    attempts: int
    max_attempts: int
    completed_at: datetime | None = None


@dataclass
class FaultReport:
    """One line of the chaos table."""

    fault: str
    jobs: int
    succeeded: int = 0
    failed: int = 0
    pending_with_attempts_left: int = 0
    lost: int = 0
    run_twice: int = 0
    stale_accepted: int = 0
    stale_refused: int = 0
    resynced: int = 0
    recover_s: float = 0.0
    drain_s: float = 0.0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogCursor:
    """Reads only what a log file gained since the cursor was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")


Syncs = dict[tuple[str, int], list[datetime]]


def successful_syncs(sync_log: str, jobs: set[str]) -> Syncs:
    """(job, attempt) -> when each sync of it succeeded, for the batch's jobs."""
    found: Syncs = defaultdict(list)
    for logged, job_id, attempt in SYNCED.findall(sync_log):
        if job_id in jobs:
            when = datetime.strptime(logged, "%Y-%m-%d %H:%M:%S,%f").astimezone()
            found[(job_id, int(attempt))].append(when)
    return dict(found)


def handed_back(worker_logs: list[str], jobs: set[str]) -> set[str]:
    """Jobs a worker released (SyncService unreachable): the release gives the attempt back, so
    the next pick syncs under the same attempt number, after the release, not beside it."""
    return {job for text in worker_logs for job in HANDED_BACK.findall(text) if job in jobs}


def refused_holders(worker_logs: list[str], jobs: set[str]) -> int:
    """Late holders told their lease was gone (by a refused completion or heartbeat)."""
    refused = {job for text in worker_logs for job in REFUSED.findall(text) if job in jobs}
    return len(refused)


def judge(
    report: FaultReport,
    enqueued: set[str],
    rows: list[JobRow],
    syncs: Syncs,
    refused: int,
    released: AbstractSet[str] = frozenset(),
) -> FaultReport:
    """Fills `report` from the rows, the successful syncs and the refusals."""
    by_id = {row.id: row for row in rows}
    lost = len(enqueued - by_id.keys())
    run_twice = stale_accepted = resynced = 0
    for row in by_id.values():
        if row.status == "succeeded":
            report.succeeded += 1
        elif row.status == "failed":
            report.failed += 1
        elif row.status == "pending" and row.attempts < row.max_attempts:
            report.pending_with_attempts_left += 1
        elif row.status not in ENDED:
            lost += 1
        attempts = {a: len(times) for (j, a), times in syncs.items() if j == row.id}
        if row.id in released:
            resynced += sum(n - 1 for n in attempts.values())
        else:
            run_twice += any(n > 1 for n in attempts.values())
        if row.status == "succeeded":
            # The accepted attempt must have synced before its completion was accepted.
            synced_at = syncs.get((row.id, row.attempts), [])
            if not synced_at or (row.completed_at and min(synced_at) > row.completed_at):
                stale_accepted += 1
            run_twice += any(a > row.attempts for a in attempts)
            resynced += sum(1 for a in attempts if a < row.attempts)
    report.lost = lost
    report.run_twice = run_twice
    report.stale_accepted = stale_accepted
    report.stale_refused = refused
    report.resynced = resynced
    return report
