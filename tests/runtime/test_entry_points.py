"""Every entry point answers `--help` with its environment variables, and does nothing else: it
serves nothing, writes no file (no database, no key file) and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from queue_service.settings import QueueSettings
from service_runtime.cli import RecordingEnv, variables_read
from sync_service.settings import SyncSettings

ROOT = Path(__file__).resolve().parents[2]

MODULES = [
    "queue_service",
    "sync_service",
    "clients.worker",
    "sync_service.emulator",
    "migrations",
    "sync_service.rotate_keys",
    "scripts.run_local",
    "scripts.dev_token",
    "scripts.runtime_load",
    "scripts.compose_env",
    "benchmarks",
]


def _help(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        # Were it to start, it would create these here, and serve on a port of its own.
        "DATABASE_URL": f"sqlite:///{cwd / 'gmbsync.db'}",
        "TOKEN_ENCRYPTION_KEY_FILE": str(cwd / "token.key"),
        "QUEUE_LISTEN_ADDR": "127.0.0.1:0",
        "SYNC_LISTEN_ADDR": "127.0.0.1:0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    env.pop("TOKEN_ENCRYPTION_KEY", None)
    try:
        return subprocess.run(
            [sys.executable, *argv, "--help"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,  # a bound for a loaded machine; a process that serves never ends
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv} --help did not exit: it is serving")


@pytest.mark.parametrize("module", MODULES)
def test_every_entry_point_answers_help_and_does_nothing_else(module: str, tmp_path: Path):
    answer = _help(["-m", module], tmp_path)

    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith(f"usage: python -m {module}")
    assert list(tmp_path.iterdir()) == []  # no database, key file, var/ or secrets


def test_gen_protos_help_regenerates_nothing(tmp_path: Path):
    marker = ROOT / "gmbsync" / "__init__.py"
    before = marker.stat().st_mtime_ns

    answer = _help([str(ROOT / "scripts" / "gen_protos.py")], tmp_path)

    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("usage:")
    assert marker.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("module", "from_env"),
    [("queue_service", QueueSettings.from_env), ("sync_service", SyncSettings.from_env)],
)
def test_service_help_lists_every_variable_its_settings_read(module: str, from_env, tmp_path: Path):  # type: ignore[no-untyped-def]
    answer = _help(["-m", module], tmp_path)

    variables = variables_read(from_env)
    assert {"JOB_RETENTION", "SYNC_LISTEN_ADDR"} & {v.name for v in variables}
    for variable in variables:
        assert variable.name in answer.stdout
    for name in ("DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert name in answer.stdout


def test_recording_env_notes_each_variable_with_its_default():
    env = RecordingEnv()

    QueueSettings.from_env(env)

    assert env.read["JOB_RETENTION"] == "30d"
    assert env.read["PRUNE_BATCH_SIZE"] == "1000"
    assert env.read["JWT_SECRET"] == ""
    assert env.read["SCHEDULER_ENABLED"] == "true"
