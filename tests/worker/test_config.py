"""WorkerConfig: flags over environment, the seed's names, and one clear line per bad value."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clients.worker.config import WorkerConfig, load_config
from service_runtime.config import ConfigError

BASE_ENV = {"TRIGGER_SECRET": "s3cret"}


def test_defaults_are_the_seeds_config() -> None:
    config = load_config([], BASE_ENV)
    assert config.queue_addr == "127.0.0.1:50051"
    assert config.sync_addr == "127.0.0.1:50052"
    assert config.job_timeout == timedelta(seconds=45)
    assert config.worker_timeout == timedelta(seconds=55)
    assert config.max_jobs_per_run == 10
    assert config.circuit_breaker_threshold == 5
    assert config.once is False
    assert config.worker_id  # host-pid
    assert config.report_interval == timedelta(milliseconds=5)
    assert config.report_batch == 200


def test_environment_sets_values() -> None:
    env = {
        **BASE_ENV,
        "QUEUE_ADDR": "queue:6000",
        "WORKER_CONCURRENCY": "8",
        "JOB_TIMEOUT": "2m",
        "LEASE_DURATION": "30s",
        "CIRCUIT_BREAKER_COOLDOWN": "500ms",
        "WORKER_ID": "worker-a",
        "WORKER_ONCE": "true",
        "WORKER_TIMEOUT": "5m",
    }
    config = load_config([], env)
    assert config.queue_addr == "queue:6000"
    assert config.concurrency == 8
    assert config.job_timeout == timedelta(minutes=2)
    assert config.lease_duration == timedelta(seconds=30)
    assert config.heartbeat_interval == pytest.approx(10.0)
    assert config.circuit_breaker_cooldown == timedelta(milliseconds=500)
    assert config.worker_id == "worker-a"
    assert config.once is True


def test_flags_win_over_environment() -> None:
    env = {**BASE_ENV, "WORKER_CONCURRENCY": "8", "MAX_JOBS_PER_RUN": "3"}
    config = load_config(["--concurrency", "2", "--once", "--max-jobs-per-run", "7"], env)
    assert config.concurrency == 2
    assert config.max_jobs_per_run == 7
    assert config.once is True


def test_result_batching_is_set_by_environment_or_flags() -> None:
    env = {**BASE_ENV, "WORKER_REPORT_INTERVAL": "20ms", "WORKER_REPORT_BATCH": "50"}
    config = load_config([], env)
    assert (config.report_interval, config.report_batch) == (timedelta(milliseconds=20), 50)
    flagged = load_config(["--report-interval", "0", "--report-batch", "1"], env)
    # 0 and 1: every result goes out on its own, at once.
    assert (flagged.report_interval, flagged.report_batch) == (timedelta(0), 1)


def test_seed_millisecond_names_are_read_when_the_plain_name_is_unset() -> None:
    env = {**BASE_ENV, "JOB_TIMEOUT_MS": "30000", "WORKER_TIMEOUT_MS": "40000"}
    config = load_config([], env)
    assert config.job_timeout == timedelta(seconds=30)
    assert config.worker_timeout == timedelta(seconds=40)
    plain_wins = load_config([], {**env, "JOB_TIMEOUT": "10s"})
    assert plain_wins.job_timeout == timedelta(seconds=10)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"JOB_TIMEOUT": "soon"}, "JOB_TIMEOUT"),
        ([], {"WORKER_CONCURRENCY": "many"}, "WORKER_CONCURRENCY"),
        ([], {"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
        (["--concurrency", "1000"], {}, "--concurrency"),
        ([], {"LEASE_DURATION": "1s"}, "LEASE_DURATION"),
        ([], {"CIRCUIT_BREAKER_THRESHOLD": "-1"}, "CIRCUIT_BREAKER_THRESHOLD"),
        ([], {"QUEUE_ADDR": "no-port"}, "QUEUE_ADDR"),
        ([], {"SYNC_ADDR": "host:99999"}, "SYNC_ADDR"),
        ([], {"JOB_TIMEOUT_MS": "45s"}, "JOB_TIMEOUT_MS"),
        ([], {"WORKER_ONCE": "maybe"}, "WORKER_ONCE"),
        ([], {"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ([], {"WORKER_REPORT_INTERVAL": "2s"}, "WORKER_REPORT_INTERVAL"),
        ([], {"WORKER_REPORT_INTERVAL": "often"}, "WORKER_REPORT_INTERVAL"),
        ([], {"WORKER_REPORT_BATCH": "0"}, "WORKER_REPORT_BATCH"),
        (["--report-batch", "1001"], {}, "--report-batch"),
        (["--once", "--job-timeout", "1m"], {}, "WORKER_TIMEOUT"),
    ],
)
def test_a_bad_value_names_its_setting(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(argv, {**BASE_ENV, **env})
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_trigger_secret_is_required_and_never_shown() -> None:
    with pytest.raises(ConfigError, match="TRIGGER_SECRET"):
        load_config([], {})
    config = load_config([], BASE_ENV)
    assert "s3cret" not in repr(config)
    assert isinstance(config, WorkerConfig)
