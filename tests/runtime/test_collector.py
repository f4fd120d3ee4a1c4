"""The garbage collector's settings for long-running processes (`PYTHON_GC`).

Each process under test is a child, so that the test session's own collector is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service_runtime.collector import YOUNG_THRESHOLD, collector_mode
from service_runtime.config import ConfigError, Env

ROOT = Path(__file__).resolve().parents[2]

# Prints what the collector does in the process: objects frozen out of its walks, and the
# youngest generation's threshold.
_REPORT = "import gc; print(gc.get_freeze_count(), gc.get_threshold()[0])"


def _output_of(script: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _collector_of(script: str, **env: str) -> tuple[int, int]:
    frozen, threshold = _output_of(script, **env).split()[-2:]
    return int(frozen), int(threshold)


def test_the_default_is_tuned() -> None:
    assert collector_mode(Env({})) == "tuned"


@pytest.mark.parametrize("value", ["stock", "STOCK"])
def test_stock_is_accepted_in_any_case(value: str) -> None:
    assert collector_mode(Env({"PYTHON_GC": value})) == "stock"


def test_an_unknown_mode_is_a_configuration_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="PYTHON_GC='off': use one of tuned, stock"):
        collector_mode(Env({"PYTHON_GC": "off"}))


def test_tuned_freezes_what_start_up_made_and_raises_the_young_threshold() -> None:
    frozen, threshold = _collector_of(
        "from service_runtime.collector import settle_collector\n"
        "import grpc, sqlalchemy\n"
        "settle_collector('tuned')\n" + _REPORT
    )

    assert frozen > 10_000  # the imported modules' objects, at least
    assert threshold == YOUNG_THRESHOLD


def test_tuned_collects_start_ups_garbage_before_freezing_it() -> None:
    """An unreachable cycle made during start-up is freed, not frozen for the process's life."""
    script = (
        "import gc, weakref\n"
        "from service_runtime.collector import settle_collector\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.other, b.other = b, a\n"
        "gone = weakref.ref(a); del a, b\n"
        "gc.disable()\n"  # only settle_collector may collect it
        "settle_collector('tuned')\n"
        "print('freed' if gone() is None else 'kept')\n"
    )

    assert _output_of(script).strip() == "freed"


def test_stock_leaves_pythons_settings() -> None:
    frozen, threshold = _collector_of(
        "from service_runtime.collector import settle_collector\n"
        "settle_collector('stock')\n" + _REPORT
    )

    assert (frozen, threshold) == _collector_of(_REPORT)


# The services' entry point serves with the collector set; `app` stands for the service.
_SERVED = """
import gc, sys, types
from service_runtime.serving import service_main

class App:
    def __init__(self, settings):
        pass

    async def run_until_signal(self):
        print(gc.get_freeze_count(), gc.get_threshold()[0])

sys.exit(service_main("probe", "probe", lambda: types.SimpleNamespace(log_level="INFO"), App))
"""

# The worker's entry point, its serving loop replaced by the same report.
_WORKED = """
import gc, sys
import clients.worker.__main__ as worker_main

async def report(config):
    print(gc.get_freeze_count(), gc.get_threshold()[0])
    return 0

worker_main._serve = report
sys.exit(worker_main.main([]))
"""


@pytest.mark.parametrize("script", [_SERVED, _WORKED], ids=["service", "worker"])
def test_the_entry_points_run_with_the_collector_tuned(script: str) -> None:
    frozen, threshold = _collector_of(script, TRIGGER_SECRET="a-trigger-secret")

    assert frozen > 10_000
    assert threshold == YOUNG_THRESHOLD


@pytest.mark.parametrize("script", [_SERVED, _WORKED], ids=["service", "worker"])
def test_python_gc_stock_runs_the_entry_points_with_pythons_settings(script: str) -> None:
    frozen, threshold = _collector_of(script, TRIGGER_SECRET="a-trigger-secret", PYTHON_GC="stock")

    assert (frozen, threshold) == _collector_of(_REPORT)
