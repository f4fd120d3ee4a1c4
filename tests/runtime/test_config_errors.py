"""Every setting of every program, given a bad value, stops the program with exit code 2 and one
line that names the setting: no traceback, and never the value of a secret.

The settings are not listed here: each program's settings are read once with an empty
environment and `Env.read` says which it asked for and of what kind, so a setting added later
is walked too. Text settings have no bad value; the test insists they are exactly the known
free-text ones, so a new setting that should be checked cannot hide as text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clients.worker import __main__ as worker_main
from clients.worker.config import env_settings
from queue_service.settings import QueueSettings
from service_runtime.config import Env
from service_runtime.serving import service_main
from sync_service.emulator import __main__ as emulator_main
from sync_service.settings import SyncSettings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-do-not-print"

# One value per kind that the kind must refuse.
BAD_VALUES: dict[str, str] = {
    "int": "many",
    "float": "lots",
    "duration": "forever",
    "bool": "maybe",
    "address": "not-an-address",
    "log_level": "LOUD",
    "url": "ftp://example.com",
    "database_url": f"mysql://app:{SECRET}@db.example.com/app",
    "fernet_keys": f"not-a-fernet-key-{SECRET}",
    "host": "not a host!",
    "api_quotas": "teleport=5",
    "milliseconds": "soon",
    "worker_id": "w" * 500,
    "metrics_address": "not-an-address",
    "tls_file": "/nonexistent/tls.pem",
    "choice": "sometimes",
}
# Settings any value of which is acceptable: secrets, client ids, a file path.
FREE_TEXT = {
    "JWT_SECRET",
    "TRIGGER_SECRET",
    "GOOGLE_OAUTH_CLIENT_ID",
    "GOOGLE_OAUTH_CLIENT_SECRET",
    "TOKEN_ENCRYPTION_KEY_FILE",
    "GRPC_TLS_SERVER_NAME",
}
# Read outside the settings classes for every program: OpenTelemetry's own variables
# (service_runtime.telemetry), the log format (service_runtime.logs), the event loop
# (service_runtime.eventloop) and the garbage collector (service_runtime.collector).
TRACING_BAD_VALUES = {
    "EVENT_LOOP": "twisted",
    "PYTHON_GC": "off",
    "LOG_FORMAT": "xml",
    "OTEL_TRACES_EXPORTER": "carrier-pigeon",
    "OTEL_TRACES_SAMPLER": "sometimes",
    "OTEL_TRACES_SAMPLER_ARG": "lots",
}


def _read(load: Callable[[Env], Any]) -> dict[str, str]:
    env = Env({})
    load(env)
    return env.read


def _emulator_settings() -> dict[str, str]:
    env = Env({})
    emulator_main.parse_args([], env)
    return env.read


PROGRAMS: dict[str, dict[str, str]] = {
    "queue_service": _read(QueueSettings.from_env),
    "sync_service": _read(SyncSettings.from_env),
    "worker": env_settings(),
    "emulator": _emulator_settings(),
}


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for program, settings in PROGRAMS.items():
        for name, kind in sorted(settings.items()):
            if kind != "text":
                cases.append((program, name, BAD_VALUES[kind]))
        if program != "emulator":
            cases += [(program, name, value) for name, value in TRACING_BAD_VALUES.items()]
    return cases


def _never_started(*_args: Any) -> Any:
    raise AssertionError("the program started with a bad setting")


async def _never_served(*_args: Any) -> Any:
    raise AssertionError("the program started with a bad setting")


def _run(program: str) -> int:
    if program == "queue_service":
        return service_main(program, "queue-service", QueueSettings.from_env, _never_started)
    if program == "sync_service":
        return service_main(program, "sync-service", SyncSettings.from_env, _never_started)
    if program == "worker":
        return worker_main.main([])
    return emulator_main.main([])


def test_every_text_setting_is_a_known_free_text_one() -> None:
    text = {n for settings in PROGRAMS.values() for n, kind in settings.items() if kind == "text"}
    assert text == FREE_TEXT
    assert {k for s in PROGRAMS.values() for k in s.values()} - {"text"} <= BAD_VALUES.keys()


def test_the_walk_covers_the_settings_operators_ask_about() -> None:
    walked = {(program, name) for program, name, _ in _cases()}
    for name in ("TOKEN_ENCRYPTION_KEY", "LOG_LEVEL", "SYNC_LISTEN_ADDR", "DATABASE_URL"):
        assert ("sync_service", name) in walked
    assert ("queue_service", "QUEUE_LISTEN_ADDR") in walked
    assert ("worker", "QUEUE_ADDR") in walked
    assert ("emulator", "EMULATOR_PORT") in walked
    assert len(walked) > 80


@pytest.mark.parametrize(("program", "name", "value"), _cases())
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    program: str,
    name: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for every in {
        n for settings in PROGRAMS.values() for n in settings
    } | TRACING_BAD_VALUES.keys():
        monkeypatch.delenv(every, raising=False)
    monkeypatch.setenv("TRIGGER_SECRET", "a-trigger-secret")  # the worker needs one
    monkeypatch.setenv(name, value)
    # Were the bad value accepted, the test fails instead of serving forever.
    monkeypatch.setattr(worker_main, "_serve", _never_served)
    monkeypatch.setattr(emulator_main, "_serve", _never_served)

    code = _run(program)

    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert name in lines[0]
    assert "Traceback" not in err + out
    assert SECRET not in err + out


# The same, through real processes, for the settings that once crashed with a traceback.
@pytest.mark.parametrize(
    ("module", "name", "value"),
    [
        ("sync_service", "TOKEN_ENCRYPTION_KEY", f"not-a-fernet-key-{SECRET}"),
        ("queue_service", "LOG_LEVEL", "LOUD"),
        ("queue_service", "QUEUE_LISTEN_ADDR", "not-an-address"),
        ("sync_service", "SYNC_LISTEN_ADDR", "not-an-address"),
        ("queue_service", "DATABASE_URL", f"mysql://app:{SECRET}@db.example.com/app"),
        ("clients.worker", "QUEUE_ADDR", "not-an-address"),
        ("sync_service.emulator", "EMULATOR_PORT", "eighty"),
        ("migrations", "DATABASE_URL", f"mysql://app:{SECRET}@db.example.com/app"),
    ],
)
def test_a_process_with_a_bad_setting_exits_2_with_one_line(
    module: str, name: str, value: str, tmp_path: Path
) -> None:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not any(name == k for settings in PROGRAMS.values() for name in settings)
    }
    environ.update({name: value, "TRIGGER_SECRET": "a-trigger-secret"})
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=tmp_path,
        env={**environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout
