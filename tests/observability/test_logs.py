"""LOG_FORMAT: text or JSON lines for every process; httpx's per-request lines kept out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service_runtime.config import ConfigError, Env
from service_runtime.logs import log_format_from_env

ROOT = Path(__file__).resolve().parents[2]

# A process that sets logging up as every entry point does, then logs as the services do.
PROGRAM = """
import logging
from service_runtime.logs import configure_logging
configure_logging("INFO")
logging.getLogger("queue_service.app").info("ready on port %d", 50051)
logging.getLogger("httpx").info("HTTP Request: GET https://example.test/v4/x 200 OK")
try:
    raise ValueError("the failure")
except ValueError:
    logging.getLogger("queue_service.app").exception("it broke")
"""


def run_program(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_json_format_writes_one_object_per_line() -> None:
    lines = run_program(LOG_FORMAT="json").stderr.splitlines()
    records = [json.loads(line) for line in lines]
    ready, broke = records
    assert ready["message"] == "ready on port 50051"
    assert (ready["level"], ready["logger"]) == ("INFO", "queue_service.app")
    assert ready["time"].endswith("+00:00")
    assert broke["level"] == "ERROR"
    assert "ValueError: the failure" in broke["exc_info"]


def test_json_lines_name_the_copy_of_a_supervised_service() -> None:
    lines = run_program(LOG_FORMAT="json", SERVICE_PROCESS_INDEX="3").stderr.splitlines()
    assert json.loads(lines[0])["process_index"] == "3"


def test_text_is_the_default_and_httpx_requests_are_not_logged() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "INFO queue_service.app: ready on port 50051" in result.stderr
    assert "HTTP Request" not in result.stderr


@pytest.mark.parametrize("program", ["queue_service", "sync_service"])
def test_a_bad_log_format_stops_a_service_with_one_line(program: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", program],
        cwd=ROOT,
        env={**os.environ, "LOG_FORMAT": "xml", "QUEUE_LISTEN_ADDR": "127.0.0.1:0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{program}: configuration error: LOG_FORMAT='xml': use text or json"
    ]


def test_a_bad_log_format_stops_the_worker_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clients.worker"],
        cwd=ROOT,
        env={**os.environ, "LOG_FORMAT": "xml", "TRIGGER_SECRET": "s"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "worker: configuration error: LOG_FORMAT='xml': use text or json"
    )


def test_log_format_values() -> None:
    assert log_format_from_env(Env({})) == "text"
    assert log_format_from_env(Env({"LOG_FORMAT": "JSON"})) == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        log_format_from_env(Env({"LOG_FORMAT": "yaml"}))
