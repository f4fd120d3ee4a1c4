"""A service whose listen address cannot be bound says so in one line and exits 1, never with
a traceback: a port already taken by another program, as an operator meets it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "variable"),
    [("queue_service", "QUEUE_LISTEN_ADDR"), ("sync_service", "SYNC_LISTEN_ADDR")],
)
def test_a_taken_port_ends_the_service_with_one_line(
    module: str, variable: str, tmp_path: Path
) -> None:
    # A plain listening socket (no SO_REUSEPORT), as another program would hold the port.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", module],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), variable: address},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode == 1, done.stderr
    assert f"{module}: cannot listen on {address}" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr
