"""WorkerConfig: the worker's settings, from command-line flags over environment variables.

Each setting has a flag (`--job-timeout`) and a variable (`JOB_TIMEOUT`); the seed's names
(`JOB_TIMEOUT_MS`, `WORKER_TIMEOUT_MS`) are read too when the plain name is not set. A bad
value raises ConfigError with one line naming the flag or variable it came from.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from service_runtime.cli import (
    COLLECTOR_VARIABLE,
    EVENT_LOOP_VARIABLE,
    TRACING_VARIABLES,
    environment_epilog,
    format_default,
)
from service_runtime.config import ConfigError, Env, parse_duration, parse_metrics_addr
from service_runtime.tls import CLIENT_TLS_VARIABLES, ClientTls

_MAX_WORKER_ID = 200


def default_worker_id() -> str:
    """host-pid: unique among the workers of a machine, readable in the job rows."""
    return f"{socket.gethostname()}-{os.getpid()}"[:_MAX_WORKER_ID]


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker loop needs to know; the defaults are the seed's CONFIG."""

    trigger_secret: str = field(repr=False)
    queue_addr: str = "127.0.0.1:50051"
    sync_addr: str = "127.0.0.1:50052"
    worker_id: str = field(default_factory=default_worker_id)
    # Jobs run at once by one worker process.
    concurrency: int = 4
    # Jobs leased ahead of a free slot, so that a slot that frees starts its next job at once
    # rather than after a PickJobs round trip: for many short jobs. Not used with --once.
    prefetch: int = 0
    # Deadline of one SyncAccount call.
    job_timeout: timedelta = timedelta(seconds=45)
    # --once: the whole run, picking to reporting, ends within this.
    worker_timeout: timedelta = timedelta(seconds=55)
    # --once: jobs picked at most.
    max_jobs_per_run: int = 10
    once: bool = False
    # Consecutive infrastructure failures that open the circuit breaker, and how long it stays
    # open before one probe job is tried.
    circuit_breaker_threshold: int = 5
    circuit_breaker_cooldown: timedelta = timedelta(seconds=30)
    # Lease asked for at pick and at every extension; heartbeats extend it every third of it.
    lease_duration: timedelta = timedelta(seconds=60)
    # On SIGTERM/SIGINT, in-flight jobs get this long to finish before they are handed back.
    shutdown_grace: timedelta = timedelta(seconds=30)
    # How long one PickJobs call waits for a job (long poll).
    poll_wait: timedelta = timedelta(seconds=5)
    # How long a job waits for the channel to SyncService to connect before it counts as an
    # infrastructure failure and is handed back unrun.
    connect_timeout: timedelta = timedelta(seconds=5)
    # Results (completions, failures, hand-backs) wait at most this long to go to QueueService
    # together in one ReportResults, or until `report_batch` of them are waiting.
    report_interval: timedelta = timedelta(milliseconds=5)
    report_batch: int = 200
    log_level: str = "INFO"
    # Where the worker serves Prometheus metrics (host:port); empty: nowhere.
    metrics_addr: str = ""
    # TLS to both services (GRPC_TLS, GRPC_TLS_CA_FILE, GRPC_TLS_CERT_FILE, ...); None: plain.
    tls: ClientTls | None = None

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease extensions: a third of the lease, so two may fail in a row."""
        return self.lease_duration.total_seconds() / 3


@dataclass(frozen=True)
class _Setting:
    flag: str
    env: str
    kind: str  # "str", "int" or "duration"
    default: object
    minimum: object = None
    maximum: object = None
    help: str = ""
    # The seed's millisecond variable read when `env` is not set.
    legacy_ms_env: str | None = None


_SETTINGS: dict[str, _Setting] = {
    "queue_addr": _Setting("--queue-addr", "QUEUE_ADDR", "str", "127.0.0.1:50051",
                           help="QueueService host:port"),
    "sync_addr": _Setting("--sync-addr", "SYNC_ADDR", "str", "127.0.0.1:50052",
                          help="SyncService host:port"),
    "worker_id": _Setting("--worker-id", "WORKER_ID", "str", None,
                          help="name in job rows and logs (default host-pid)"),
    "concurrency": _Setting("--concurrency", "WORKER_CONCURRENCY", "int", 4, 1, 256,
                            help="jobs run at once"),
    "prefetch": _Setting("--prefetch", "WORKER_PREFETCH", "int", 0, 0, 256,
                         help="jobs leased ahead of a free slot (0: none)"),
    "job_timeout": _Setting("--job-timeout", "JOB_TIMEOUT", "duration", timedelta(seconds=45),
                            timedelta(seconds=1), timedelta(hours=1),
                            help="deadline of one SyncAccount call", legacy_ms_env="JOB_TIMEOUT_MS"),
    "worker_timeout": _Setting("--worker-timeout", "WORKER_TIMEOUT", "duration",
                               timedelta(seconds=55), timedelta(seconds=1), timedelta(hours=24),
                               help="--once: whole run within this",
                               legacy_ms_env="WORKER_TIMEOUT_MS"),
    "max_jobs_per_run": _Setting("--max-jobs-per-run", "MAX_JOBS_PER_RUN", "int", 10, 1, 100,
                                 help="--once: jobs picked at most"),
    "circuit_breaker_threshold": _Setting("--circuit-breaker-threshold",
                                          "CIRCUIT_BREAKER_THRESHOLD", "int", 5, 1, 1000,
                                          help="infrastructure failures in a row that open it"),
    "circuit_breaker_cooldown": _Setting("--circuit-breaker-cooldown", "CIRCUIT_BREAKER_COOLDOWN",
                                         "duration", timedelta(seconds=30),
                                         timedelta(milliseconds=100), timedelta(hours=1),
                                         help="how long it stays open before a probe",
                                         legacy_ms_env="CIRCUIT_BREAKER_COOLDOWN_MS"),
    "lease_duration": _Setting("--lease-duration", "LEASE_DURATION", "duration",
                               timedelta(seconds=60), timedelta(seconds=5), timedelta(hours=1),
                               help="lease asked for at pick and each heartbeat"),
    "shutdown_grace": _Setting("--shutdown-grace", "SHUTDOWN_GRACE", "duration",
                               timedelta(seconds=30), timedelta(0), timedelta(minutes=30),
                               help="time in-flight jobs get to finish on SIGTERM"),
    "poll_wait": _Setting("--poll-wait", "POLL_WAIT", "duration", timedelta(seconds=5),
                          timedelta(0), timedelta(seconds=60),
                          help="how long one PickJobs waits for a job"),
    "connect_timeout": _Setting("--connect-timeout", "SYNC_CONNECT_TIMEOUT", "duration",
                                timedelta(seconds=5), timedelta(milliseconds=100),
                                timedelta(minutes=5),
                                help="wait for a SyncService connection per job"),
    "report_interval": _Setting("--report-interval", "WORKER_REPORT_INTERVAL", "duration",
                                timedelta(milliseconds=5), timedelta(0), timedelta(seconds=1),
                                help="longest wait of a result before it is sent (batching)"),
    "report_batch": _Setting("--report-batch", "WORKER_REPORT_BATCH", "int", 200, 1, 1000,
                             help="results sent at most in one ReportResults"),
    "log_level": _Setting("--log-level", "LOG_LEVEL", "str", "INFO", help="DEBUG, INFO, ..."),
    "metrics_addr": _Setting("--metrics-addr", "WORKER_METRICS_ADDR", "str", "",
                             help="host:port of the Prometheus metrics endpoint (default: none)"),
}  # fmt: skip

_LOG_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}
# What the text settings hold, where a kind says more than "str".
_TEXT_KINDS = {
    "QUEUE_ADDR": "address",
    "SYNC_ADDR": "address",
    "LOG_LEVEL": "log_level",
    "WORKER_METRICS_ADDR": "metrics_address",
}


def env_settings() -> dict[str, str]:
    """Every environment variable the worker reads, and its kind (the kinds of
    service_runtime.config.Env.read): for tests and tooling that walk all settings."""
    found: dict[str, str] = {"WORKER_ONCE": "bool", "TRIGGER_SECRET": "text"}
    for setting in _SETTINGS.values():
        kind = setting.kind if setting.kind != "str" else "text"
        found[setting.env] = _TEXT_KINDS.get(setting.env, kind)
        if setting.legacy_ms_env:
            found[setting.legacy_ms_env] = "milliseconds"
    found["WORKER_ID"] = "worker_id"
    tls_env = Env({})
    ClientTls.from_env(tls_env)
    return found | tls_env.read


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.worker",
        description="Runs sync jobs of QueueService through SyncService. Every flag has an "
        "environment variable (shown in brackets); flags win. Durations: 500ms, 45s, 10m, 1h.",
        epilog=environment_epilog(
            [
                ("TRIGGER_SECRET", "(required: the worker authenticates with it)"),
                ("WORKER_ONCE", "false"),
                *((s.env, format_default(s.default)) for s in _SETTINGS.values()),
                *((name, "") for name in CLIENT_TLS_VARIABLES),
                EVENT_LOOP_VARIABLE,
                COLLECTOR_VARIABLE,
                *TRACING_VARIABLES,
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--once",
        action="store_true",
        default=None,
        help="pick up to MAX_JOBS_PER_RUN jobs, run them, record the run and exit within "
        "WORKER_TIMEOUT (for cron or serverless) [WORKER_ONCE]",
    )
    for dest, setting in _SETTINGS.items():
        parser.add_argument(
            setting.flag, dest=dest, default=None, help=f"{setting.help} [{setting.env}]"
        )
    return parser


def _convert(label: str, setting: _Setting, raw: str) -> object:
    if setting.kind == "str":
        return raw.strip()
    # An int or a timedelta, compared with bounds of the same kind.
    value: Any
    if setting.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{label}={raw!r} is not a whole number") from None
    else:
        value = parse_duration(label, raw)
    if not setting.minimum <= value <= setting.maximum:
        low, high = setting.minimum, setting.maximum
        if isinstance(low, timedelta) and isinstance(high, timedelta):
            low, high = f"{low.total_seconds():g}s", f"{high.total_seconds():g}s"
        raise ConfigError(f"{label}={raw.strip()} is out of range ({low}..{high})")
    return value


def _lookup(
    dest: str, setting: _Setting, flags: argparse.Namespace, environ: Mapping[str, str]
) -> object:
    flag_value = getattr(flags, dest)
    if flag_value is not None:
        return _convert(setting.flag, setting, flag_value)
    raw = environ.get(setting.env, "")
    if raw.strip():
        return _convert(setting.env, setting, raw)
    if setting.legacy_ms_env and environ.get(setting.legacy_ms_env, "").strip():
        raw_ms = environ[setting.legacy_ms_env].strip()
        if not raw_ms.isdigit():
            raise ConfigError(f"{setting.legacy_ms_env}={raw_ms!r} is not a whole number of ms")
        return _convert(setting.legacy_ms_env, setting, f"{raw_ms}ms")
    return setting.default


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Parses flags over the environment. Raises ConfigError naming the bad setting."""
    environ = os.environ if environ is None else environ
    flags = build_parser().parse_args(argv)
    # Each value has its field's type: _convert made it by the setting's kind.
    values: dict[str, Any] = {
        dest: _lookup(dest, s, flags, environ) for dest, s in _SETTINGS.items()
    }

    once_raw = environ.get("WORKER_ONCE", "").strip().lower()
    if flags.once:
        once = True
    elif once_raw in {"", "0", "false", "no", "off"}:
        once = False
    elif once_raw in {"1", "true", "yes", "on"}:
        once = True
    else:
        raise ConfigError(f"WORKER_ONCE={once_raw!r} is not a boolean (true/false)")

    secret = environ.get("TRIGGER_SECRET", "")
    if not secret.strip():
        raise ConfigError("TRIGGER_SECRET is not set: the worker authenticates with it")

    for dest in ("queue_addr", "sync_addr"):
        host, sep, port = str(values[dest]).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            setting = _SETTINGS[dest]
            raise ConfigError(f"{setting.env}={values[dest]!r} is not host:port")

    worker_id = values.pop("worker_id") or default_worker_id()
    if len(str(worker_id)) > _MAX_WORKER_ID:
        raise ConfigError(f"WORKER_ID is longer than {_MAX_WORKER_ID} characters")

    level = str(values["log_level"]).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={values['log_level']!r}: use one of {sorted(_LOG_LEVELS)}")
    values["log_level"] = level
    parse_metrics_addr(_SETTINGS["metrics_addr"].env, str(values["metrics_addr"]))

    tls = ClientTls.from_env(Env(environ))
    config = WorkerConfig(
        trigger_secret=secret, worker_id=str(worker_id), once=once, tls=tls, **values
    )
    if once and config.worker_timeout <= config.job_timeout:
        raise ConfigError(
            f"WORKER_TIMEOUT ({config.worker_timeout.total_seconds():g}s) must be longer than "
            f"JOB_TIMEOUT ({config.job_timeout.total_seconds():g}s) with --once"
        )
    return config
