"""The sync worker: QueueService jobs run through SyncService (`python -m clients.worker`).

A module per role: `config` (flags and environment), `circuit_breaker`, `lease` (heartbeats),
`tracing` (the job's span), `job` (one job, start to report) and `runner` (the loop).
"""

from clients.worker.config import WorkerConfig, load_config
from clients.worker.runner import RunSummary, Worker

__all__ = ["RunSummary", "Worker", "WorkerConfig", "load_config"]
