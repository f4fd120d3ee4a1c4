"""QUEUE_PROCESSES: several QueueService processes share one address under a supervisor.

Real `python -m queue_service` processes on the session's PostgreSQL. Which process holds which
socket is read from /proc (Linux), so the test sees the kernel's own view: every process has a
listening socket on the one port, and each of them accepted and served connections.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from queue_service.settings import QueueSettings
from service_runtime.config import ConfigError, Env
from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET, WORKER_METADATA
from tests.queue.helpers import eventually, free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

ROOT = Path(__file__).resolve().parents[2]
LISTEN, ESTABLISHED = "0A", "01"


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(child) for child in task.read_text().split())
    return found


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def sockets_on_port(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets whose local port is `port`, in `state`."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def processes(self) -> list[int]:
        return children(self.process.pid)

    def holding(self, state: str) -> list[int]:
        """The processes that hold a socket on the port in `state`."""
        on_port = sockets_on_port(self.port, state)
        return [pid for pid in self.processes() if socket_inodes(pid) & on_port]

    async def exit_code(self, timeout: float = 60) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m queue_service`, its output in a file (a chatty child never blocks on a pipe)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "queue_service"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def two_processes(pg_url, tmp_path) -> AsyncIterator[Supervised]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "QUEUE_"))},
        "DATABASE_URL": pg_url,
        "QUEUE_LISTEN_ADDR": f"127.0.0.1:{port}",
        "QUEUE_PROCESSES": "2",
        "JWT_SECRET": TEST_JWT_SECRET,
        "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
        "SCHEDULER_ENABLED": "false",
        "GRACE_PERIOD": "5s",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "queue_service.log"
    process = spawn(env, log)
    supervised = Supervised(process, port, log)
    try:

        async def both_listening() -> bool:
            assert process.poll() is None, log.read_text()
            return len(supervised.holding(LISTEN)) == 2

        await eventually(both_listening, timeout=60)
        yield supervised
    finally:
        pids = supervised.processes()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_two_processes_listen_on_one_address_and_both_serve_calls(two_processes):
    address = f"127.0.0.1:{two_processes.port}"
    channels: list[grpc.aio.Channel] = []
    try:
        # Each channel is a connection of its own (no shared subchannel pool); the kernel
        # hands each new connection to one of the listening processes.
        for _ in range(200):
            channel = grpc.aio.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            channels.append(channel)
            stub = pb_grpc.QueueServiceStub(channel)
            status = await stub.GetQueueStatus(
                pb.GetQueueStatusRequest(), metadata=WORKER_METADATA, timeout=30
            )
            assert status.stats.total == 0
            if len(two_processes.holding(ESTABLISHED)) == 2:
                break
        assert sorted(two_processes.holding(ESTABLISHED)) == sorted(two_processes.processes())
    finally:
        for channel in channels:
            await channel.close()

    pids = two_processes.processes()
    two_processes.process.send_signal(signal.SIGTERM)
    assert await two_processes.exit_code() == 0, two_processes.log.read_text()
    assert not any(alive(pid) for pid in pids)


async def test_a_process_that_dies_stops_the_other_and_the_supervisor_fails(two_processes):
    first, second = two_processes.processes()

    os.kill(first, signal.SIGKILL)

    assert await two_processes.exit_code() == 1
    assert not alive(second)
    log = two_processes.log.read_text()
    assert f"(pid {first}) exited with code -9 while serving" in log
    assert "none is restarted here" in log


async def test_killing_the_supervisor_takes_its_processes_down(two_processes):
    pids = two_processes.processes()

    two_processes.process.kill()
    await two_processes.exit_code()

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in pids)

    await eventually(all_gone, timeout=60)


def test_several_processes_are_refused_on_sqlite(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")

    with pytest.raises(ConfigError, match=r"QUEUE_PROCESSES=2: only one process .* SQLite"):
        QueueSettings.from_env(Env({"QUEUE_PROCESSES": "2", "QUEUE_LISTEN_ADDR": "0.0.0.0:50051"}))
    assert QueueSettings.from_env(Env({"QUEUE_PROCESSES": "1"})).processes == 1


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::]:0"])
def test_several_processes_need_a_fixed_port(monkeypatch, address):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/x")

    with pytest.raises(ConfigError, match="QUEUE_LISTEN_ADDR"):
        QueueSettings.from_env(Env({"QUEUE_PROCESSES": "3", "QUEUE_LISTEN_ADDR": address}))


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_queue_processes_out_of_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match="QUEUE_PROCESSES"):
        QueueSettings.from_env(Env({"QUEUE_PROCESSES": value}))


def test_python_m_refuses_several_processes_on_sqlite_with_exit_code_2(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
        "QUEUE_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "QUEUE_PROCESSES": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "queue_service"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert "QUEUE_PROCESSES=2" in done.stderr.decode()
