"""`gmbsync pause` and `gmbsync resume` against a real QueueService."""

from __future__ import annotations

import uuid

from service_runtime.auth import Role
from tests.cli.conftest import run_cli, token_for
from tests.conftest import ADMIN_USER
from tests.queue.conftest import RunningQueue


def _env(queue: RunningQueue, token: str) -> dict[str, str]:
    return {"QUEUE_ADDR": queue.address, "GMBSYNC_TOKEN": token}


async def test_pause_and_resume_a_user_then_the_whole_queue(queue: RunningQueue):
    env = _env(queue, token_for(ADMIN_USER, Role.ADMIN))
    user = str(uuid.uuid4())
    job = await queue.enqueue(await queue.add_account(uuid.UUID(user)))

    paused = await run_cli("pause", "--user", user, "--reason", "noisy", "--json", env=env)
    whole = await run_cli("pause", "--reason", "maintenance", env=env)
    while_paused = await queue.pick(max_jobs=5)
    resumed = await run_cli("resume", "--user", user, "--json", env=env)
    again = await run_cli("resume", "--user", user, env=env)
    queue_resumed = await run_cli("resume", env=env)

    assert paused.code == 0, paused.stderr
    data = paused.json()
    assert data["pause"]["user_id"] == user and data["pause"]["reason"] == "noisy"
    assert [p["user_id"] for p in data["active_pauses"]] == [user]
    assert whole.code == 0 and "paused the whole queue" in whole.stdout
    assert "active pauses" in whole.stdout and "maintenance" in whole.stdout
    assert while_paused == []
    assert resumed.code == 0 and resumed.json()["resumed"] is True
    assert [p["reason"] for p in resumed.json()["active_pauses"]] == ["maintenance"]
    assert again.code == 0 and f"user {user} was not paused" in again.stdout
    assert queue_resumed.code == 0 and "nothing is paused" in queue_resumed.stdout
    assert [j.id for j in await queue.pick(max_jobs=5)] == [job.id]


async def test_pause_needs_an_operator_and_a_good_user_id(pg_queue: RunningQueue):
    user_env = _env(pg_queue, token_for(uuid.uuid4()))
    admin_env = _env(pg_queue, token_for(ADMIN_USER, Role.ADMIN))

    denied = await run_cli("pause", env=user_env)
    bad = await run_cli("resume", "--user", "nope", env=admin_env)

    assert denied.code == 4 and "PERMISSION_DENIED" in denied.stderr
    assert bad.code == 1 and "user_id" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
