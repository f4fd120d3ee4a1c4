"""How jobs, runs and schedules look in `gmbsync`'s tables (shared by the command groups)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.text import Text

from clients.cli.output import Output, enum_label, span, status_text, when
from clients.queue import Job, JobStatus, SyncType, WorkerRunStatus

JOB_COLUMNS = ("id", "account", "type", "status", "prio", "attempts", "created", "last error")


def job_status(job: Job) -> Text:
    return status_text(enum_label(JobStatus.Name(job.status), "JOB_STATUS_"))


def sync_type(value: SyncType.ValueType) -> str:
    return enum_label(SyncType.Name(value), "SYNC_TYPE_")


def short_error(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def job_row(job: Job) -> Sequence[Any]:
    return (
        job.id,
        job.account_name or job.account_id,
        sync_type(job.sync_type),
        job_status(job),
        job.priority,
        f"{job.attempts}/{job.max_attempts}",
        when(job, "created_at"),
        short_error(job.last_error) or "-",
    )


def jobs_table(out: Output, jobs: Iterable[Job], *, title: str | None = None) -> None:
    rows = [job_row(j) for j in jobs]
    if rows:
        out.table(JOB_COLUMNS, rows, title=title)
    else:
        out.line(f"{title}: none" if title else "no jobs")


def job_detail(out: Output, job: Job) -> None:
    """One job: its fields, its attempt history and what its sync reported."""
    out.fields(
        [
            ("id", job.id),
            ("status", job_status(job)),
            ("account", f"{job.account_name} ({job.account_id})"),
            ("user", job.user_id),
            ("type", sync_type(job.sync_type)),
            ("priority", job.priority),
            ("attempts", f"{job.attempts} of {job.max_attempts}"),
            ("created", when(job, "created_at")),
            ("scheduled", when(job, "scheduled_at")),
            ("started", when(job, "started_at")),
            ("completed", when(job, "completed_at")),
            ("worker", job.worker_id or "-"),
            ("lease expires", when(job, "lease_expires_at")),
            ("last error", job.last_error or "-"),
        ],
        title=f"job {job.id}",
    )
    if job.errors:
        out.table(
            ("attempt", "failed at", "worker", "permanent", "error"),
            (
                (
                    e.attempt,
                    when(e, "failed_at"),
                    e.worker_id or "-",
                    "yes" if e.permanent else "no",
                    e.error,
                )
                for e in job.errors
            ),
            title="attempts that failed",
        )
    if job.HasField("sync_result"):
        result = job.sync_result
        out.fields(
            [
                ("locations synced", result.locations_synced),
                ("locations removed", result.locations_removed),
                ("locations skipped", result.locations_skipped),
                ("reviews added", result.reviews_added),
                ("reviews updated", result.reviews_updated),
                ("reviews removed", result.reviews_removed),
                ("Google calls", result.api_calls),
                ("duration", span(result, "duration")),
                ("resumed", "yes" if result.resumed else "no"),
            ],
            title="result",
        )
        for skipped in result.skipped_locations:
            out.line(f"  skipped {skipped.location_id}: {skipped.reason}")


def run_status(value: WorkerRunStatus.ValueType) -> Text:
    label = enum_label(WorkerRunStatus.Name(value), "WORKER_RUN_STATUS_")
    style = {"running": "blue", "completed": "green", "failed": "red"}.get(label, "")
    return Text(label, style=style)
