"""GetDiagnostics: the seed's monitoring queries and alerts, computed from one snapshot.

Alerts are warnings (the queue is degraded but working) except `google_api_disabled`, which is
critical: Google refuses every call of the Cloud project until someone enables the API, so no
retry or backoff will ever make those syncs succeed. `long_transaction` says that an open
transaction (typically an idle reader holding a snapshot) keeps vacuum from cleaning the queue.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from queue_service.models import (
    Alert,
    AlertSeverity,
    ApiDisabled,
    Diagnostics,
    JobStatus,
    VacuumHealth,
)


@dataclass(frozen=True)
class AlertThresholds:
    """The seed's alert thresholds, configurable."""

    failure_rate: float = 0.20
    processing_age: timedelta = timedelta(minutes=15)
    pending_backlog: int = 50
    # How far back an `api_disabled` row of error_logs raises google_api_disabled.
    api_disabled_window: timedelta = timedelta(minutes=15)
    # An open transaction older than this holds back vacuum long enough to say so.
    transaction_age: timedelta = timedelta(minutes=5)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def build_diagnostics(snapshot: dict[str, Any], thresholds: AlertThresholds) -> Diagnostics:
    now = snapshot["now"]
    stats = snapshot["stats"]
    hour, week = snapshot["last_hour"], snapshot["last_week"]
    succeeded, failed = JobStatus.SUCCEEDED.value, JobStatus.FAILED.value
    finished_hour = hour.get(succeeded, 0) + hour.get(failed, 0)
    failure_rate = _rate(hour.get(failed, 0), finished_hour)
    success_rate = _rate(week.get(succeeded, 0), week.get(succeeded, 0) + week.get(failed, 0))
    durations: list[float] = snapshot["durations"]
    oldest = snapshot["oldest_ready_at"]
    oldest_age = max(now - oldest, timedelta(0)) if oldest is not None else timedelta(0)
    stale_jobs = snapshot["stale_jobs"]

    alerts: list[Alert] = []
    if finished_hour and failure_rate > thresholds.failure_rate:
        alerts.append(
            Alert(
                name="high_failure_rate",
                message=(
                    f"{failure_rate:.0%} of the {finished_hour} jobs finished in the last hour "
                    f"failed (threshold {thresholds.failure_rate:.0%}); see recent_failures"
                ),
                value=failure_rate,
                threshold=thresholds.failure_rate,
            )
        )
    if stale_jobs:
        alerts.append(
            Alert(
                name="stale_processing_jobs",
                message=(
                    f"{len(stale_jobs)} jobs have been processing for more than "
                    f"{thresholds.processing_age}; their workers may be stuck (MarkStaleJobs "
                    "recovers them)"
                ),
                value=float(len(stale_jobs)),
                threshold=thresholds.processing_age.total_seconds(),
            )
        )
    if stats.pending > thresholds.pending_backlog:
        alerts.append(
            Alert(
                name="queue_backlog",
                message=(
                    f"{stats.pending} jobs are pending (threshold {thresholds.pending_backlog}): "
                    "add workers or raise their concurrency"
                ),
                value=float(stats.pending),
                threshold=float(thresholds.pending_backlog),
            )
        )
    failed_runs = snapshot["failed_worker_runs_24h"]
    if failed_runs:
        alerts.append(
            Alert(
                name="failed_worker_runs",
                message=f"{failed_runs} worker runs failed in the last 24 hours; see recent_worker_runs",
                value=float(failed_runs),
                threshold=0.0,
            )
        )
    disabled: list[ApiDisabled] = snapshot.get("api_disabled", [])
    if disabled:
        alerts.append(_api_disabled_alert(disabled, thresholds.api_disabled_window))
    vacuum: VacuumHealth = snapshot.get("vacuum", VacuumHealth())
    if vacuum.oldest_transaction_age > thresholds.transaction_age:
        alerts.append(_long_transaction_alert(vacuum, thresholds.transaction_age))
    return Diagnostics(
        stats=stats,
        oldest_pending_age=oldest_age,
        stale_jobs=stale_jobs,
        failure_rate_last_hour=failure_rate,
        finished_last_hour=finished_hour,
        success_rate_7d=success_rate,
        avg_duration=timedelta(seconds=sum(durations) / len(durations))
        if durations
        else timedelta(0),
        p95_duration=timedelta(seconds=percentile(durations, 0.95)),
        recent_failures=snapshot["recent_failures"],
        recent_worker_runs=snapshot["recent_worker_runs"],
        alerts=alerts,
        generated_at=now,
        vacuum=vacuum,
    )


def _long_transaction_alert(vacuum: VacuumHealth, threshold: timedelta) -> Alert:
    who = vacuum.oldest_transaction_application or "a session without application_name"
    return Alert(
        name="long_transaction",
        message=(
            f"a transaction of {who} ({vacuum.oldest_transaction_state or 'unknown state'}) has "
            f"been open for {vacuum.oldest_transaction_age} (threshold {threshold}): vacuum "
            f"cannot remove the queue's dead rows newer than its snapshot "
            f"({vacuum.queue_dead_tuples} dead now), and every scan of the queue grows with them"
        ),
        value=vacuum.oldest_transaction_age.total_seconds(),
        threshold=threshold.total_seconds(),
    )


def _api_disabled_alert(disabled: list[ApiDisabled], window: timedelta) -> Alert:
    def one(entry: ApiDisabled) -> str:
        accounts = f"{entry.accounts} account{'' if entry.accounts == 1 else 's'}"
        where = f"; enable it at {entry.activation_url}" if entry.activation_url else ""
        return f"{entry.service or 'a Google API'} ({accounts} hit it{where})"

    services = "; ".join(one(entry) for entry in disabled)
    return Alert(
        name="google_api_disabled",
        message=(
            f"Google API disabled for the whole Cloud project (seen in the last {window}): "
            f"{services}. Every sync fails until it is enabled; workers hold their dispatch "
            "meanwhile"
        ),
        value=float(sum(entry.accounts for entry in disabled)),
        threshold=0.0,
        severity=AlertSeverity.CRITICAL,
    )


def percentile(values: Iterable[float], fraction: float) -> float:
    """The `fraction` percentile (0..1) by linear interpolation; 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]
