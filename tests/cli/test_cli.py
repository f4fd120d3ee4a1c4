"""`gmbsync` against a real QueueService: output, JSON shape and exit code of each command."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clients.cli.main import build_parser
from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.auth import Role
from tests.cli.conftest import run_cli, token_for
from tests.conftest import ADMIN_USER, TEST_JWT_SECRET, WORKER_METADATA
from tests.queue.conftest import RunningQueue

ROOT = Path(__file__).resolve().parents[2]


def subcommands() -> list[list[str]]:
    """Every command and action of the parser, e.g. ['jobs', 'show']."""
    found: list[list[str]] = []

    def walk(parser, prefix):  # type: ignore[no-untyped-def]
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    found.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", subcommands(), ids=" ".join)
async def test_every_command_answers_help(command: list[str]):
    result = await run_cli(*command, "--help")
    assert result.code == 0
    assert "usage: gmbsync " + " ".join(command) in " ".join(result.stdout.split())


# --- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_one_account_prints_the_job(queue: RunningQueue, admin_env):
    account = await queue.add_account(name="Blue Bottle")
    result = await run_cli("enqueue", str(account), "--full", "--priority", "7", env=admin_env)
    assert result.code == 0, result.stderr
    assert "Blue Bottle" in result.stdout
    assert "1 enqueued, 0 already queued" in result.stdout

    again = await run_cli("enqueue", str(account), "--json", env=admin_env)
    assert again.code == 0
    data = again.json()
    assert (data["enqueued"], data["duplicates"]) == (0, 1)
    [answer] = data["results"]
    assert answer["duplicate"] is True
    assert answer["job"]["account_id"] == str(account)
    assert answer["job"]["sync_type"] == "SYNC_TYPE_FULL"
    assert answer["job"]["priority"] == 7
    assert answer["message"] == "Sync job already queued for this account"


async def test_enqueue_many_from_stdin_in_batches(pg_queue: RunningQueue, monkeypatch):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    accounts = [str(await pg_queue.add_account()) for _ in range(5)]
    text = "# accounts to sync\n" + "\n".join(accounts) + "\n\n" + accounts[0] + "\n"
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(text))
    monkeypatch.setattr("clients.cli.commands.enqueue.BATCH_SIZE", 2)
    result = await run_cli("enqueue", "--file", "-", "--in", "1h", "--json", env=env)
    assert result.code == 0, result.stderr
    data = result.json()
    assert (data["enqueued"], data["duplicates"]) == (5, 1)
    assert [r["job"]["account_id"] for r in data["results"]] == [*accounts, accounts[0]]
    assert all(r["job"]["scheduled_at"] for r in data["results"])


async def test_enqueue_checks_every_id_before_sending_any(pg_queue: RunningQueue, tmp_path):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    good = await pg_queue.add_account()
    listing = tmp_path / "accounts.txt"
    listing.write_text(f"{good}\nnot-a-uuid\n")
    result = await run_cli("enqueue", "-f", str(listing), env=env)
    assert result.code == 2
    assert result.stderr.strip() == (
        f"gmbsync: error: {listing} line 2: 'not-a-uuid' is not an account id (a UUID)"
    )
    status = await pg_queue.stub.GetQueueStatus(
        pb.GetQueueStatusRequest(), metadata=WORKER_METADATA
    )
    assert status.stats.total == 0


async def test_enqueue_of_an_unknown_account_is_one_line_and_exit_1(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    result = await run_cli("enqueue", str(uuid.uuid4()), env=env)
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gmbsync: error: QueueService.EnqueueSync: NOT_FOUND")


async def test_enqueue_bad_priority_names_the_field(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    account = await pg_queue.add_account()
    result = await run_cli("enqueue", str(account), "--priority", "500", env=env)
    assert result.code == 1
    assert "INVALID_ARGUMENT" in result.stderr and "priority" in result.stderr
    assert "Traceback" not in result.stderr


async def test_enqueue_usage_errors_exit_2(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    assert (await run_cli("enqueue", env=env)).code == 2
    bad_delay = await run_cli("enqueue", str(uuid.uuid4()), "--in", "soon", env=env)
    assert bad_delay.code == 2 and "--in='soon' is not a duration" in bad_delay.stderr
    two_waits = await run_cli("enqueue", str(uuid.uuid4()), str(uuid.uuid4()), "--wait", env=env)
    assert two_waits.code == 2 and "--wait" in two_waits.stderr


# --- jobs, cancel, retry -----------------------------------------------------------------------


async def test_jobs_list_filters_and_pages(queue: RunningQueue, admin_env):
    accounts = [await queue.add_account() for _ in range(3)]
    jobs = [await queue.enqueue(a) for a in accounts]
    await queue.stub.CancelJob(pb.CancelJobRequest(job_id=jobs[0].id), metadata=WORKER_METADATA)

    everything = await run_cli("jobs", "--json", env=admin_env)
    assert everything.code == 0, everything.stderr
    assert {j["id"] for j in everything.json()["jobs"]} == {j.id for j in jobs}

    cancelled = await run_cli("jobs", "list", "--status", "cancelled", "--json", env=admin_env)
    assert [j["id"] for j in cancelled.json()["jobs"]] == [jobs[0].id]

    first_two = await run_cli("jobs", "list", "--limit", "2", env=admin_env)
    assert first_two.code == 0
    assert "--limit shows more" in first_two.stderr
    assert sum(job.id in first_two.stdout for job in jobs) == 2

    one_account = await run_cli(
        "jobs", "list", "--account", str(accounts[1]), "--json", env=admin_env
    )
    assert [j["id"] for j in one_account.json()["jobs"]] == [jobs[1].id]


async def test_jobs_show_gives_attempt_history(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(account)
    [leased] = await pg_queue.pick()
    await pg_queue.fail(leased, "Google said 503")

    table = await run_cli("jobs", "show", job.id, env=env)
    assert table.code == 0, table.stderr
    assert "attempts that failed" in table.stdout
    assert "Google said 503" in table.stdout

    data = (await run_cli("jobs", "show", job.id, "--json", env=env)).json()
    assert data["id"] == job.id
    assert data["status"] == "JOB_STATUS_PENDING"
    assert [(e["attempt"], e["error"]) for e in data["errors"]] == [(1, "Google said 503")]


async def test_jobs_show_of_unknown_job_exits_1(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    result = await run_cli("jobs", "show", str(uuid.uuid4()), env=env)
    assert result.code == 1
    assert "NOT_FOUND" in result.stderr
    bad = await run_cli("jobs", "show", "nope", env=env)
    assert bad.code == 1 and "job_id" in bad.stderr


async def test_jobs_wait_exit_code_follows_the_outcome(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(account)

    timed_out = await run_cli("jobs", "wait", job.id, "--wait-timeout", "0.3", env=env)
    assert timed_out.code == 3
    assert "not finished after 0.3 s (last seen JOB_STATUS_PENDING)" in timed_out.stderr

    [leased] = await pg_queue.pick()
    await pg_queue.fail(leased, "revoked", permanent=True)
    failed = await run_cli("jobs", "wait", job.id, "--json", env=env)
    assert failed.code == 5
    assert failed.json()["status"] == "JOB_STATUS_FAILED"

    await run_cli("retry", job.id, env=env)
    [leased] = await pg_queue.pick()
    await pg_queue.complete(leased)
    succeeded = await run_cli("jobs", "wait", job.id, env=env)
    assert succeeded.code == 0
    assert "succeeded" in succeeded.stdout


async def test_cancel_and_retry_report_each_job(queue: RunningQueue, admin_env):
    account = await queue.add_account()
    job = await queue.enqueue(account)
    unknown = str(uuid.uuid4())

    result = await run_cli("cancel", job.id, unknown, "--json", env=admin_env)
    assert result.code == 1  # one of the two was refused
    data = result.json()
    assert [j["status"] for j in data["jobs"]] == ["JOB_STATUS_CANCELLED"]
    assert [(r["job_id"], r["code"]) for r in data["refused"]] == [(unknown, "NOT_FOUND")]
    assert result.stderr.count("\n") == 1 and unknown in result.stderr

    again = await run_cli("cancel", job.id, env=admin_env)
    assert again.code == 1 and "FAILED_PRECONDITION" not in again.stdout

    retried = await run_cli("retry", job.id, "--json", env=admin_env)
    assert retried.code == 0, retried.stderr
    [back] = retried.json()["jobs"]
    assert (back["status"], back["attempts"]) == ("JOB_STATUS_PENDING", 0)


# --- status, diagnostics, workers, schedule --------------------------------------------------------


async def test_status_counts_and_recent_jobs(queue: RunningQueue, admin_env):
    account = await queue.add_account()
    job = await queue.enqueue(account)
    result = await run_cli("status", "--json", "--recent", "5", env=admin_env)
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["stats"]["pending"] == 1 and data["stats"]["total"] == 1
    assert isinstance(data["stats"]["total"], int)  # int64: a number, not proto3's string
    assert [j["id"] for j in data["jobs"]] == [job.id]
    table = await run_cli("status", env=admin_env)
    assert "jobs by status" in table.stdout and job.id in table.stdout


async def test_diagnostics_highlights_alerts_and_check_exits_6(pg_url, auth_settings):
    from tests.queue.conftest import queue_settings, start_queue, stop_queue

    running = await start_queue(queue_settings(pg_url, auth_settings, alert_pending_backlog=1))
    try:
        env = {"QUEUE_ADDR": running.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
        quiet = await run_cli("diagnostics", "--check", env=env)
        assert quiet.code == 0, quiet.stderr
        assert "no active alerts" in quiet.stdout
        for _ in range(2):
            await running.enqueue(await running.add_account())
        noisy = await run_cli("diagnostics", "--check", env=env)
        assert noisy.code == 6
        assert "WARNING" in noisy.stdout or "CRITICAL" in noisy.stdout
        assert "queue_backlog" in noisy.stdout
        data = (await run_cli("diagnostics", "--json", env=env)).json()
        assert [a["name"] for a in data["alerts"]] == ["queue_backlog"]
        assert data["stats"]["pending"] == 2
    finally:
        await stop_queue(running)


async def test_diagnostics_needs_an_operator(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(uuid.uuid4())}
    result = await run_cli("diagnostics", env=env)
    assert result.code == 4
    assert "PERMISSION_DENIED" in result.stderr


async def test_workers_lists_recent_runs(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    run = await pg_queue.stub.StartWorkerRun(
        pb.StartWorkerRunRequest(worker_id="worker-7"), metadata=WORKER_METADATA
    )
    result = await run_cli("workers", env=env)
    assert result.code == 0, result.stderr
    assert "worker-7" in result.stdout and "running" in result.stdout
    data = (await run_cli("workers", "--json", env=env)).json()
    assert [(r["id"], r["status"]) for r in data["runs"]] == [
        (run.run.id, "WORKER_RUN_STATUS_RUNNING")
    ]
    assert (await run_cli("workers", "--limit", "0", env=env)).code == 2


async def test_schedule_set_and_show(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": token_for(ADMIN_USER, Role.ADMIN)}
    account = str(await pg_queue.add_account())
    changed = await run_cli(
        "schedule", "set", account, "--incremental", "30m", "--disable", "--json", env=env
    )
    assert changed.code == 0, changed.stderr
    [schedule] = changed.json()["schedules"]
    assert schedule["incremental_interval"] == "1800s"
    assert schedule["enabled"] is False

    shown = await run_cli("schedule", "show", account, env=env)
    assert shown.code == 0
    assert account in shown.stdout and "off" in shown.stdout

    assert (await run_cli("schedule", "set", account, env=env)).code == 2
    unknown = await run_cli("schedule", "show", str(uuid.uuid4()), env=env)
    assert unknown.code == 1 and "NOT_FOUND" in unknown.stderr


# --- connection, credentials, token -----------------------------------------------------------------


async def test_unreachable_server_exits_3_in_one_line(dead_address: str):
    env = {"QUEUE_ADDR": dead_address, "GMBSYNC_TOKEN": "x"}
    result = await run_cli("status", "--timeout", "2", env=env)
    assert result.code == 3
    assert len(result.stderr.strip().splitlines()) == 1
    assert "UNAVAILABLE" in result.stderr and "is the service running" in result.stderr


async def test_no_credentials_exits_4(pg_queue: RunningQueue):
    result = await run_cli("status", env={"QUEUE_ADDR": pg_queue.address})
    assert result.code == 4
    assert "UNAUTHENTICATED" in result.stderr


async def test_jwt_secret_alone_mints_an_admin_token(pg_queue: RunningQueue):
    env = {"QUEUE_ADDR": pg_queue.address, "JWT_SECRET": TEST_JWT_SECRET}
    assert (await run_cli("diagnostics", env=env)).code == 0
    as_user = await run_cli("diagnostics", "--role", "authenticated", env=env)
    assert as_user.code == 4
    bad_user = await run_cli("status", "--as-user", "bob", env=env)
    assert bad_user.code == 2 and "--as-user" in bad_user.stderr


async def test_flags_win_over_the_environment(pg_queue: RunningQueue, dead_address: str):
    env = {"QUEUE_ADDR": dead_address, "GMBSYNC_TOKEN": "not-a-jwt"}
    token = token_for(ADMIN_USER, Role.ADMIN)
    result = await run_cli("--queue-addr", pg_queue.address, "status", "--token", token, env=env)
    assert result.code == 0, result.stderr


async def test_token_mints_a_token_the_server_accepts(pg_queue: RunningQueue):
    user = uuid.uuid4()
    minted = await run_cli(
        "token",
        "--role",
        "admin",
        "--user",
        str(user),
        "--ttl",
        "5m",
        "--json",
        env={"JWT_SECRET": TEST_JWT_SECRET},
    )
    assert minted.code == 0, minted.stderr
    data = minted.json()
    assert (data["role"], data["user_id"]) == ("admin", str(user))
    result = await run_cli(
        "diagnostics", env={"QUEUE_ADDR": pg_queue.address, "GMBSYNC_TOKEN": data["token"]}
    )
    assert result.code == 0, result.stderr
    plain = await run_cli("token", env={"JWT_SECRET": TEST_JWT_SECRET})
    assert plain.stdout.count(".") == 2 and plain.stdout.endswith("\n")


async def test_token_without_a_secret_is_a_usage_error():
    result = await run_cli("token", env={})
    assert result.code == 2
    assert "JWT_SECRET is not set" in result.stderr


def test_the_console_script_and_python_m_run_the_same_main():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"gmbsync": "clients.cli.main:entry_point"}
    completed = subprocess.run(
        [sys.executable, "-m", "clients.cli", "token", "--ttl", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"JWT_SECRET": TEST_JWT_SECRET, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "gmbsync: error: --ttl='nope' is not a duration (examples: 500ms, 45s, 10m, 1h, 30d)"
    )
