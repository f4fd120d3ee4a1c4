"""The worker's Prometheus metrics (served on WORKER_METRICS_ADDR, see service_runtime.metrics).

In-flight jobs and the circuit breaker's state are read from the live worker at scrape time;
finished jobs are counted, and timed from pick to outcome, as they end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from clients.worker.circuit_breaker import BreakerState, CircuitBreaker

if TYPE_CHECKING:
    from clients.worker.runner import Worker

# Job durations (seconds): a sync takes from well under a second (emulator, incremental) to
# many minutes (a large account, full).
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800)

JOBS = Counter(
    "gmbsync_worker_jobs_total",
    "Picked jobs that ended, by outcome (succeeded, retrying, failed, released, deferred, "
    "lease_lost, unreported).",
    ["outcome"],
)
JOB_SECONDS = Histogram(
    "gmbsync_worker_job_duration_seconds",
    "Time from a job's pick to its outcome in this worker, by outcome.",
    ["outcome"],
    buckets=JOB_BUCKETS,
)
IN_FLIGHT = Gauge(
    "gmbsync_worker_jobs_in_flight",
    "Jobs this worker holds: running, or waiting for their result to be acknowledged.",
)
RUNNING = Gauge("gmbsync_worker_jobs_running", "Jobs this worker is running now.")
PREFETCHED = Gauge(
    "gmbsync_worker_jobs_prefetched",
    "Jobs this worker has leased ahead of a free slot (WORKER_PREFETCH), waiting to start.",
)
CONCURRENCY = Gauge("gmbsync_worker_concurrency", "Jobs this worker runs at once at most.")
BREAKER_STATE = Gauge(
    "gmbsync_worker_circuit_breaker_state",
    "1 for the state the worker's circuit breaker is in (closed, open, half_open), else 0.",
    ["state"],
)
BREAKER_OPENED = Gauge(
    "gmbsync_worker_circuit_breaker_openings",
    "How many times the circuit breaker has opened since the worker started.",
)


def _is_state(breaker: CircuitBreaker, state: BreakerState) -> Callable[[], float]:
    return lambda: 1.0 if breaker.state is state else 0.0


def watch(worker: Worker) -> None:
    """Reads `worker`'s in-flight jobs and breaker at every scrape (the newest worker wins)."""
    IN_FLIGHT.set_function(lambda: len(worker._inflight))
    RUNNING.set_function(lambda: worker._running)
    PREFETCHED.set_function(lambda: len(worker._held))
    CONCURRENCY.set(worker.config.concurrency)
    breaker = worker.breaker
    for state in BreakerState:
        BREAKER_STATE.labels(state.value).set_function(_is_state(breaker, state))
    BREAKER_OPENED.set_function(lambda: breaker.times_opened)


# Each outcome's counter and histogram, looked up once: `labels()` per job cost a draining
# worker as much as the count and the observation themselves.
_ENDED: dict[str, tuple[Counter, Histogram]] = {}


def job_ended(outcome: str, seconds: float) -> None:
    children = _ENDED.get(outcome)
    if children is None:
        children = _ENDED[outcome] = (JOBS.labels(outcome), JOB_SECONDS.labels(outcome))
    counter, histogram = children
    counter.inc()
    histogram.observe(seconds)
