"""The CLI and the blocking clients against real servers: QueueService alone (tests/queue's
`queue` fixtures), or the whole system with a worker (tests/e2e's `system`)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from clients.cli.main import main
from service_runtime.auth import Role, issue_token
from tests.conftest import ADMIN_USER, TEST_JWT_SECRET
from tests.e2e.conftest import free_port, spans, system  # noqa: F401  (fixtures used here)
from tests.queue.conftest import RunningQueue, pg_queue, queue  # noqa: F401


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def token_for(user: uuid.UUID | str, role: Role | str = Role.AUTHENTICATED) -> str:
    return issue_token(TEST_JWT_SECRET, user_id=user, role=role)


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> CliResult:
    """Runs `gmbsync argv...` in a thread (its blocking calls must not stall the servers
    running on this test's event loop) and returns what it printed and its exit code."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        main, list(argv), stdout=stdout, stderr=stderr, environ=env or {}
    )
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


CliRunner = Callable[..., Any]


@pytest.fixture
def admin_env(queue: RunningQueue) -> dict[str, str]:  # noqa: F811
    return {"QUEUE_ADDR": queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}


@pytest.fixture
def dead_address() -> str:
    """An address nothing listens on."""
    return f"127.0.0.1:{free_port()}"
