"""QueueService settings, from environment variables with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.engine import make_url

from queue_service.tables import SCHEDULE_INTERVAL_MAX as _INTERVAL_MAX_SECONDS
from queue_service.tables import SCHEDULE_INTERVAL_MIN as _INTERVAL_MIN_SECONDS
from service_runtime.auth import AuthSettings
from service_runtime.config import ConfigError, Env
from service_runtime.database import PoolSettings, database_url_from_env
from service_runtime.tls import ServerTls

SCHEDULE_INTERVAL_MIN = timedelta(seconds=_INTERVAL_MIN_SECONDS)
SCHEDULE_INTERVAL_MAX = timedelta(seconds=_INTERVAL_MAX_SECONDS)
# The priority band of scheduled syncs: above batch work, below anything a user asks for.
SCHEDULE_PRIORITY_MIN, SCHEDULE_PRIORITY_MAX = 0, 5


@dataclass(frozen=True)
class QueueSettings:
    listen_addr: str = "127.0.0.1:50051"
    # Processes serving listen_addr together (`python -m queue_service`; PostgreSQL only).
    processes: int = 1
    database_url: str = ""
    # DB_POOL_SIZE, DB_MAX_OVERFLOW, DB_POOL_TIMEOUT.
    db_pool: PoolSettings = field(default_factory=PoolSettings)
    auth: AuthSettings = field(
        default_factory=lambda: AuthSettings(jwt_secret="", trigger_secret="")
    )
    # Backoff after the n-th failed attempt: base * 2^(n-1), jittered by +-retry_jitter.
    retry_delay_base: timedelta = timedelta(minutes=1)
    retry_jitter: float = 0.1
    default_max_attempts: int = 3
    default_lease: timedelta = timedelta(seconds=60)
    # How often the leader reaps expired leases.
    reaper_interval: timedelta = timedelta(seconds=5)
    # A waiting picker re-checks this often even without a notification.
    pick_fallback_interval: timedelta = timedelta(seconds=1)
    stale_threshold: timedelta = timedelta(minutes=10)
    # Alert thresholds of GetDiagnostics (the seed's "Alerts").
    alert_failure_rate: float = 0.20
    alert_processing_age: timedelta = timedelta(minutes=15)
    alert_pending_backlog: int = 50
    # `api_disabled` rows of error_logs this recent raise the critical google_api_disabled alert.
    alert_api_disabled_window: timedelta = timedelta(minutes=15)
    # An open transaction older than this raises long_transaction (it holds back vacuum).
    alert_transaction_age: timedelta = timedelta(minutes=5)
    grace_period: timedelta = timedelta(seconds=10)
    # Finished jobs older than this are deleted by the leader; None keeps them forever.
    job_retention: timedelta | None = timedelta(days=30)
    # Finished worker runs older than this are deleted too; None keeps them forever.
    worker_run_retention: timedelta | None = timedelta(days=30)
    # How often the leader prunes, and how many rows each DELETE of a round removes.
    prune_interval: timedelta = timedelta(hours=1)
    prune_batch_size: int = 1000
    log_level: str = "INFO"
    # Periodic syncs, enqueued by the leader (see docs/scheduler.md).
    scheduler_enabled: bool = True
    schedule_incremental_interval: timedelta = timedelta(hours=1)
    schedule_full_interval: timedelta = timedelta(hours=24)
    # Within the band of scheduled syncs (0..5), below every sync a user asks for (10..20).
    schedule_priority: int = 0
    scheduler_tick: timedelta = timedelta(seconds=30)
    # The Google quota SyncService works within: GBP_QUOTA_PER_MINUTE per GBP_QUOTA_WINDOW.
    gbp_quota_per_window: int = 300
    gbp_quota_window: timedelta = timedelta(minutes=1)
    # How often the open WatchJob streams read their jobs again (one statement a tick).
    watch_poll_interval: timedelta = timedelta(seconds=1)
    # The per-user enqueue rate limit (queue_service/rate_limit.py): syncs a second, 0 for none.
    enqueue_rate_per_user: float = 5.0
    enqueue_burst_per_user: int = 100
    # Prometheus metrics endpoint (host, port); None: none (see docs/observability.md).
    metrics_addr: tuple[str, int] | None = None
    # How often the leader reads the queue's state gauges from the database.
    metrics_refresh: timedelta = timedelta(seconds=15)
    # QUEUE_TLS_CERT_FILE, QUEUE_TLS_KEY_FILE, QUEUE_TLS_CLIENT_CA_FILE; None: plain text.
    tls: ServerTls | None = None

    @property
    def gbp_quota_per_minute(self) -> float:
        return self.gbp_quota_per_window * 60.0 / self.gbp_quota_window.total_seconds()

    @classmethod
    def from_env(cls, env: Env | None = None) -> QueueSettings:
        env = env or Env()
        settings = cls._from_env(env)
        _check_processes(settings)
        return settings

    @classmethod
    def _from_env(cls, env: Env) -> QueueSettings:
        return cls(
            listen_addr=env.address("QUEUE_LISTEN_ADDR", cls.listen_addr),
            processes=env.int("QUEUE_PROCESSES", cls.processes, minimum=1, maximum=64),
            database_url=database_url_from_env(env),
            db_pool=PoolSettings.from_env(env),
            auth=AuthSettings.from_env(env),
            retry_delay_base=env.duration(
                "RETRY_DELAY_BASE",
                cls.retry_delay_base,
                minimum=timedelta(milliseconds=10),
                maximum=timedelta(hours=24),
            ),
            default_max_attempts=env.int(
                "DEFAULT_MAX_ATTEMPTS", cls.default_max_attempts, minimum=1, maximum=25
            ),
            default_lease=env.duration(
                "LEASE_DURATION",
                cls.default_lease,
                minimum=timedelta(seconds=5),
                maximum=timedelta(hours=1),
            ),
            reaper_interval=env.duration(
                "REAPER_INTERVAL",
                cls.reaper_interval,
                minimum=timedelta(milliseconds=50),
                maximum=timedelta(minutes=10),
            ),
            pick_fallback_interval=env.duration(
                "PICK_FALLBACK_INTERVAL",
                cls.pick_fallback_interval,
                minimum=timedelta(milliseconds=10),
                maximum=timedelta(minutes=1),
            ),
            stale_threshold=env.duration(
                "STALE_JOB_THRESHOLD",
                cls.stale_threshold,
                minimum=timedelta(minutes=1),
                maximum=timedelta(days=7),
            ),
            alert_failure_rate=env.float(
                "ALERT_FAILURE_RATE", cls.alert_failure_rate, minimum=0.0, maximum=1.0
            ),
            alert_processing_age=env.duration(
                "ALERT_PROCESSING_AGE",
                cls.alert_processing_age,
                minimum=timedelta(minutes=1),
                maximum=timedelta(days=7),
            ),
            alert_pending_backlog=env.int(
                "ALERT_PENDING_BACKLOG", cls.alert_pending_backlog, minimum=1, maximum=10_000_000
            ),
            alert_api_disabled_window=env.duration(
                "ALERT_API_DISABLED_WINDOW",
                cls.alert_api_disabled_window,
                minimum=timedelta(minutes=1),
                maximum=timedelta(days=7),
            ),
            alert_transaction_age=env.duration(
                "ALERT_TRANSACTION_AGE",
                cls.alert_transaction_age,
                minimum=timedelta(0),
                maximum=timedelta(days=7),
            ),
            grace_period=env.duration(
                "GRACE_PERIOD",
                cls.grace_period,
                minimum=timedelta(0),
                maximum=timedelta(minutes=10),
            ),
            job_retention=env.duration(
                "JOB_RETENTION",
                timedelta(days=30),
                minimum=timedelta(0),
                maximum=timedelta(days=3650),
            )
            or None,
            worker_run_retention=env.duration(
                "WORKER_RUN_RETENTION",
                timedelta(days=30),
                minimum=timedelta(0),
                maximum=timedelta(days=3650),
            )
            or None,
            prune_interval=env.duration(
                "PRUNE_INTERVAL",
                cls.prune_interval,
                minimum=timedelta(seconds=1),
                maximum=timedelta(days=7),
            ),
            prune_batch_size=env.int(
                "PRUNE_BATCH_SIZE", cls.prune_batch_size, minimum=1, maximum=100_000
            ),
            log_level=env.log_level("LOG_LEVEL", cls.log_level),
            scheduler_enabled=env.bool("SCHEDULER_ENABLED", cls.scheduler_enabled),
            schedule_incremental_interval=env.duration(
                "SCHEDULE_INCREMENTAL_INTERVAL",
                cls.schedule_incremental_interval,
                minimum=SCHEDULE_INTERVAL_MIN,
                maximum=SCHEDULE_INTERVAL_MAX,
            ),
            schedule_full_interval=env.duration(
                "SCHEDULE_FULL_INTERVAL",
                cls.schedule_full_interval,
                minimum=SCHEDULE_INTERVAL_MIN,
                maximum=SCHEDULE_INTERVAL_MAX,
            ),
            schedule_priority=env.int(
                "SCHEDULE_PRIORITY",
                cls.schedule_priority,
                minimum=SCHEDULE_PRIORITY_MIN,
                maximum=SCHEDULE_PRIORITY_MAX,
            ),
            scheduler_tick=env.duration(
                "SCHEDULER_TICK",
                cls.scheduler_tick,
                minimum=timedelta(milliseconds=10),
                maximum=timedelta(minutes=10),
            ),
            gbp_quota_per_window=env.int(
                "GBP_QUOTA_PER_MINUTE", cls.gbp_quota_per_window, minimum=1, maximum=1_000_000
            ),
            gbp_quota_window=env.duration(
                "GBP_QUOTA_WINDOW",
                cls.gbp_quota_window,
                minimum=timedelta(milliseconds=100),
                maximum=timedelta(hours=1),
            ),
            watch_poll_interval=env.duration(
                "WATCH_POLL_INTERVAL",
                cls.watch_poll_interval,
                minimum=timedelta(milliseconds=50),
                maximum=timedelta(minutes=1),
            ),
            enqueue_rate_per_user=env.float(
                "ENQUEUE_RATE_PER_USER", cls.enqueue_rate_per_user, minimum=0.0, maximum=1e6
            ),
            enqueue_burst_per_user=env.int(
                "ENQUEUE_BURST_PER_USER", cls.enqueue_burst_per_user, minimum=1, maximum=1_000_000
            ),
            metrics_addr=env.metrics_address("QUEUE_METRICS_ADDR"),
            metrics_refresh=env.duration(
                "QUEUE_METRICS_REFRESH",
                cls.metrics_refresh,
                minimum=timedelta(milliseconds=100),
                maximum=timedelta(minutes=10),
            ),
            tls=ServerTls.from_env(env, "QUEUE"),
        )


def _check_processes(settings: QueueSettings) -> None:
    """Several processes need a shared database and a fixed port to share."""
    if settings.processes == 1:
        return
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        raise ConfigError(
            f"QUEUE_PROCESSES={settings.processes}: only one process can serve a queue on "
            "SQLite; use PostgreSQL (DATABASE_URL) or QUEUE_PROCESSES=1"
        )
    _host, _, port = settings.listen_addr.rpartition(":")
    if port in ("", "0"):
        raise ConfigError(
            f"QUEUE_PROCESSES={settings.processes}: QUEUE_LISTEN_ADDR={settings.listen_addr!r} "
            "must name a fixed port for the processes to share"
        )
