"""Durations in settings read the way the documentation writes them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from queue_service.settings import QueueSettings
from service_runtime.config import ConfigError, Env, parse_duration


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("45s", timedelta(seconds=45)),
        ("10m", timedelta(minutes=10)),
        ("1h", timedelta(hours=1)),
        ("30d", timedelta(days=30)),
        ("1.5", timedelta(seconds=1.5)),
    ],
)
def test_a_duration_reads_each_documented_unit(raw: str, expected: timedelta):
    assert parse_duration("X", raw) == expected


@pytest.mark.parametrize("raw", ["", "ten minutes", "1w", "-5s", "5 days"])
def test_a_malformed_duration_names_the_setting(raw: str):
    with pytest.raises(ConfigError, match="JOB_RETENTION"):
        parse_duration("JOB_RETENTION", raw)


def test_the_documented_job_retention_of_30_days_is_accepted():
    settings = QueueSettings.from_env(Env({"JOB_RETENTION": "30d"}))

    assert settings.job_retention == timedelta(days=30)
