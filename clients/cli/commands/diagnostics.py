"""`gmbsync diagnostics` (the queue's health, alerts highlighted) and `gmbsync workers` (recent
worker runs). Both read GetDiagnostics: admin or worker credentials."""

from __future__ import annotations

import argparse

from rich.text import Text

from clients.cli.context import AddCommon, Context, UsageError
from clients.cli.exitcodes import ExitCode
from clients.cli.output import Output, human_duration, message_dict, span, when
from clients.cli.render import jobs_table, run_status
from gmbsync.queue.v1 import queue_service_pb2 as pb


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    diagnostics = groups.add_parser(
        "diagnostics", help="queue health: counts, rates, durations, alerts", description=__doc__
    )
    add_common(diagnostics)
    diagnostics.add_argument(
        "--recent", type=int, default=10, help="recent failures to show, 1..100 (default 10)"
    )
    diagnostics.add_argument(
        "--check", action="store_true", help="exit 6 when any alert is active (for monitoring)"
    )
    diagnostics.set_defaults(run=show_diagnostics)

    workers = groups.add_parser(
        "workers", help="recent worker runs and their job counts", description=__doc__
    )
    add_common(workers)
    workers.add_argument("--limit", type=int, default=20, help="runs to show, 1..100 (default 20)")
    workers.set_defaults(run=show_workers)


def _limit(value: int, option: str) -> int:
    if not 1 <= value <= 100:
        raise UsageError(f"{option} must be between 1 and 100, got {value}")
    return value


def show_diagnostics(context: Context) -> int:
    recent = _limit(context.args.recent, "--recent")
    answer = context.queue().get_diagnostics(recent_limit=recent)
    context.out.emit(message_dict(answer), lambda: render_diagnostics(context.out, answer))
    if context.args.check and answer.alerts:
        return ExitCode.ALERTS
    return ExitCode.OK


SEVERITY_STYLES = {
    pb.ALERT_SEVERITY_CRITICAL: ("CRITICAL", "bold white on red"),
    pb.ALERT_SEVERITY_WARNING: ("WARNING", "bold black on yellow"),
}


def render_diagnostics(out: Output, answer: pb.GetDiagnosticsResponse) -> None:
    if answer.alerts:
        for alert in answer.alerts:
            label, style = SEVERITY_STYLES.get(alert.severity, ("ALERT", "bold red"))
            line = Text()
            line.append(f" {label} ", style=style)
            line.append(f" {alert.name}: ", style="bold")
            line.append(alert.message)
            line.append(f" (value {alert.value:g}, threshold {alert.threshold:g})")
            out.line(line)
    else:
        out.line(Text("no active alerts", style="green"))
    stats = answer.stats
    out.fields(
        [
            ("pending", stats.pending),
            ("processing", stats.processing),
            ("succeeded", stats.succeeded),
            ("failed", stats.failed),
            ("cancelled", stats.cancelled),
            ("oldest pending", human_duration(answer.oldest_pending_age.ToTimedelta())),
            (
                "failure rate, last hour",
                f"{answer.failure_rate_last_hour:.1%} of {answer.finished_last_hour}",
            ),
            ("success rate, 7 days", f"{answer.success_rate_7d:.1%}"),
            ("average duration", span(answer, "avg_duration")),
            ("p95 duration", span(answer, "p95_duration")),
            ("generated", when(answer, "generated_at")),
        ],
        title="queue",
    )
    if answer.stale_jobs:
        jobs_table(out, answer.stale_jobs, title="stale processing jobs")
    if answer.recent_failures:
        jobs_table(out, answer.recent_failures, title="recent failures")


def show_workers(context: Context) -> int:
    limit = _limit(context.args.limit, "--limit")
    answer = context.queue().get_diagnostics(recent_limit=limit)
    runs = list(answer.recent_worker_runs)

    def render() -> None:
        context.out.table(
            (
                "id",
                "worker",
                "status",
                "started",
                "finished",
                "picked",
                "succeeded",
                "failed",
                "released",
                "notes",
            ),
            (
                (
                    run.id,
                    run.worker_id,
                    run_status(run.status),
                    when(run, "started_at"),
                    when(run, "finished_at"),
                    run.jobs_picked,
                    run.jobs_succeeded,
                    run.jobs_failed,
                    run.jobs_released,
                    run.notes or "-",
                )
                for run in runs
            ),
            title="recent worker runs",
        )

    context.out.emit({"runs": [message_dict(r) for r in runs]}, render)
    return ExitCode.OK
