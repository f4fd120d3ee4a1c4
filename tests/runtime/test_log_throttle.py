"""A trace collector that is down costs one log line now and then, not one every few seconds."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from service_runtime.log_throttle import EXPORTER_LOGGERS, LogThrottle, throttle_exporter_logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("otlp", level, __file__, 1, message, ("traces",), None)


def test_the_first_failure_passes_then_one_per_period_saying_how_many_were_held():
    clock = Clock()
    throttle = LogThrottle(timedelta(minutes=5), clock)
    retrying = "Transient error encountered while exporting %s, retrying"

    passed = [throttle.filter(record(retrying)) for _ in range(10)]
    clock.now += 299
    passed.append(throttle.filter(record(retrying)))
    clock.now += 1
    later = record(retrying)
    passed.append(throttle.filter(later))

    assert passed == [True] + [False] * 10 + [True]
    assert "10 more like this held back" in later.getMessage()


def test_different_messages_and_levels_are_throttled_apart():
    throttle = LogThrottle(timedelta(minutes=5), Clock())

    assert throttle.filter(record("Transient error %s"))
    assert throttle.filter(record("Failed to export %s", logging.ERROR))
    assert not throttle.filter(record("Failed to export %s", logging.ERROR))


def test_the_otlp_exporter_logs_pass_through_one_throttle(caplog: pytest.LogCaptureFixture):
    throttle_exporter_logs()
    throttle_exporter_logs()  # configured twice (tests, supervisors): still one throttle
    logger = logging.getLogger(EXPORTER_LOGGERS[0])
    try:
        assert sum(isinstance(f, LogThrottle) for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=logger.name):
            for _ in range(20):
                logger.warning("Transient error %s encountered while exporting", "UNAVAILABLE")
        assert len(caplog.records) == 1
    finally:
        for f in [f for f in logger.filters if isinstance(f, LogThrottle)]:
            logger.removeFilter(f)
