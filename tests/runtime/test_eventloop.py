"""The services' and the worker's event loop: uvloop by default, the standard loop on request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from service_runtime.config import ConfigError, Env
from service_runtime.eventloop import loop_factory, run

ROOT = Path(__file__).resolve().parents[2]


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_default_loop_is_uvloop() -> None:
    assert run(_loop_type(), loop_factory(Env({}))) is uvloop.Loop


@pytest.mark.parametrize("value", ["asyncio", "ASYNCIO"])
def test_event_loop_asyncio_runs_the_standard_loop(value: str) -> None:
    factory = loop_factory(Env({"EVENT_LOOP": value}))

    assert factory is None
    assert not issubclass(run(_loop_type(), factory), uvloop.Loop)


def test_an_unknown_event_loop_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="EVENT_LOOP='twisted': use one of uvloop, asyncio"):
        loop_factory(Env({"EVENT_LOOP": "twisted"}))


def test_without_uvloop_installed_the_standard_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError

    assert loop_factory(Env({})) is None


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_worker_process_runs_on_the_chosen_loop_and_stops_cleanly(loop: str, tmp_path: Path):
    """The worker's entry point on each loop: it starts, finds no QueueService, and a --once
    run ends with its JSON summary (a failed run, exit 1), never a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "clients.worker", "--once", "--worker-timeout", "2s"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EVENT_LOOP": loop,
            "TRIGGER_SECRET": "a-trigger-secret",
            "QUEUE_ADDR": "127.0.0.1:9",  # nothing listens there
            "JOB_TIMEOUT": "1s",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    assert '"success": false' in done.stdout
    assert "Traceback" not in done.stderr
