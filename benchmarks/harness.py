"""What every benchmark of `python -m benchmarks` runs on: child processes that die with the
benchmark, their CPU time and memory read from /proc, progress lines on stderr, and the
description of the machine and software a run's figures belong to.

Children share the benchmark's process group (Ctrl-C in the terminal reaches all of them) and
are asked by the kernel to stop (SIGTERM, `PR_SET_PDEATHSIG`) if the benchmark itself dies
without cleaning up; `Processes` stops them in reverse order on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

_started = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr (stdout is for the figures)."""
    print(f"[bench {time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- /proc readings --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces: fields are counted from its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process now (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except OSError:
        return None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants: a service may run as a supervisor of several processes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each process of `pid`'s tree."""
    readings = {p: cpu_seconds(p) for p in process_tree(pid)}
    return {p: used for p, used in readings.items() if used is not None}


def tree_rss(pid: int) -> int | None:
    """RSS of `pid`'s tree now (None once `pid` is gone)."""
    readings = [rss_bytes(p) for p in process_tree(pid)]
    if readings[0] is None:
        return None
    return sum(r for r in readings if r is not None)


class CpuWindow:
    """CPU seconds of named processes (each with its descendants), and of PostgreSQL
    backends, between `start()` and `stop()`.

    Backends come and go (a pool opens overflow connections under load and closes them when
    they come back), so `backends` (async, returns pids) is sampled every `interval` seconds:
    each backend counts from its reading at the start, or from zero if it appeared later, to its
    last reading. A backend that lives less than `interval` is missed: the figure is then a
    lower bound, and `sessions` (async, sessions opened so far) says how many were opened.
    `client` adds this process's own CPU (when it is a client of the figure).
    """

    def __init__(
        self,
        processes: dict[str, int],
        *,
        backends: Callable[[], Awaitable[list[int]]] | None = None,
        sessions: Callable[[], Awaitable[int]] | None = None,
        client: bool = False,
        interval: float = 0.1,
    ) -> None:
        self.processes = processes
        self.backends = backends
        self.sessions = sessions
        self.client = client
        self.interval = interval
        self.seconds: dict[str, float] = {}
        self.wall = 0.0
        self.sessions_opened: int | None = None
        self._before: dict[str, dict[int, float]] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._client_before = 0.0
        self._sessions_before = 0
        self._sampler: asyncio.Task[None] | None = None
        self._began = 0.0

    async def start(self) -> None:
        self._before = {name: tree_cpu(pid) for name, pid in self.processes.items()}
        if self.sessions is not None:
            self._sessions_before = await self.sessions()
        if self.backends is not None:
            for pid in await self.backends():
                used = cpu_seconds(pid)
                if used is not None:
                    self._first[pid] = self._last[pid] = used
            self._sampler = asyncio.create_task(self._sample_forever())
        self._client_before = time.process_time()
        self._began = time.perf_counter()

    async def _sample(self) -> None:
        assert self.backends is not None
        for pid in await self.backends():
            used = cpu_seconds(pid)
            if used is not None:
                self._first.setdefault(pid, 0.0)
                self._last[pid] = used

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._sample()

    async def stop(self) -> dict[str, float]:
        self.wall = time.perf_counter() - self._began
        client = time.process_time() - self._client_before
        for name, pid in self.processes.items():
            before = self._before[name]
            self.seconds[name] = sum(used - before.get(p, 0.0) for p, used in tree_cpu(pid).items())
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            await self._sample()
            self.seconds["postgresql"] = sum(self._last[p] - self._first[p] for p in self._last)
        if self.client:
            self.seconds["client"] = client
        if self.sessions is not None:
            self.sessions_opened = await self.sessions() - self._sessions_before
        return self.seconds

    def per_unit_ms(self, units: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work, per process and in total."""
        if units <= 0:
            return {}
        figures = {f"{name}_ms": round(1000 * s / units, 4) for name, s in self.seconds.items()}
        figures["total_ms"] = round(1000 * sum(self.seconds.values()) / units, 4)
        return figures


class RssSampler:
    """Samples the RSS of named processes (each with its descendants) every `interval`
    seconds until stopped."""

    def __init__(self, processes: dict[str, int], interval: float = 1.0) -> None:
        self.processes = processes
        self.interval = interval
        self.samples: dict[str, list[int]] = {name: [] for name in processes}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        for name, pid in self.processes.items():
            value = tree_rss(pid)
            if value is not None:
                self.samples[name].append(value)

    async def stop(self) -> dict[str, dict[str, Any]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
        return {name: rss_summary(values) for name, values in self.samples.items()}


def rss_summary(values: list[int]) -> dict[str, Any]:
    """Start, peak and end RSS in MiB, and whether the run's last quarter sits above its first
    quarter by more than 5 % (growth that a longer run would carry on)."""
    if not values:
        return {}
    mib = [v / 2**20 for v in values]
    quarter = max(1, len(mib) // 4)
    first, last = sum(mib[:quarter]) / quarter, sum(mib[-quarter:]) / quarter
    return {
        "samples": len(mib),
        "start_mib": round(mib[0], 1),
        "peak_mib": round(max(mib), 1),
        "end_mib": round(mib[-1], 1),
        "first_quarter_mib": round(first, 1),
        "last_quarter_mib": round(last, 1),
        "grew": last > first * 1.05,
    }


# --- child processes -------------------------------------------------------------------------


# Starts a child that the kernel SIGTERMs when the benchmark dies (PR_SET_PDEATHSIG survives
# exec). A launcher rather than `preexec_fn`, which would make Python fork instead of vfork,
# running gRPC's fork handlers in a process with gRPC threads (they can abort the child).
_LAUNCHER = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass
class Child:
    """One process of the system under test; its output goes to `log_dir/<name>.log`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    process: asyncio.subprocess.Process | None = None
    _log: TextIO | None = None

    async def start(self) -> None:
        self._log = self._open_log()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCHER,
            str(os.getpid()),
            *self.argv,
            env=self.env,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )

    def _open_log(self) -> TextIO:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_path, "w", encoding="utf-8")  # closed in stop()

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, *, hurry: bool = False) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT. `hurry`: a second SIGTERM a moment after
        the first, which the worker takes as "hand back what is in flight and exit now" (else
        it waits for its long poll to return)."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            if hurry:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 0.5)
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                progress(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Processes:
    """The children of one benchmark phase, stopped in reverse order when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()

    async def stop_all(self) -> None:
        while self.children:
            await self.children.pop().stop()

    async def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.log_dir)
        await child.start()
        self.children.append(child)
        return child

    async def stop(self, *children: Child, hurry: bool = False) -> None:
        """Stops these children at once (not one after the other)."""
        await asyncio.gather(*(child.stop(hurry=hurry) for child in children))
        for child in children:
            with contextlib.suppress(ValueError):
                self.children.remove(child)

    def check_alive(self) -> None:
        """Raises if a child died: a figure measured without it would be wrong."""
        for child in self.children:
            if not child.running:
                raise RuntimeError(
                    f"{child.name} exited (code {child.process.returncode if child.process else '?'})"
                    f" during the run; last lines of {child.log_path}:\n{child.tail()}"
                )


async def wait_for_port(port: int, child: Child, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running:
            raise RuntimeError(f"{child.name} exited during start-up:\n{child.tail()}")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} is not listening on port {port}:\n{child.tail()}")


async def wait_for_health(address: str, child: Child, timeout: float = START_TIMEOUT) -> None:
    """Waits until the gRPC health service at `address` says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2

    from clients.healthcheck import health_check_rpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        check = health_check_rpc(channel)
        while time.monotonic() < deadline:
            if not child.running:
                raise RuntimeError(f"{child.name} exited during start-up:\n{child.tail()}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} at {address} did not become healthy:\n{child.tail()}")


# --- the machine and the software ------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(postgres: dict[str, str]) -> dict[str, str]:
    import google.protobuf
    import grpc
    import psycopg
    import sqlalchemy

    return {
        "python": platform.python_version(),
        "postgresql_server": postgres.get("server_version", "?"),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "sqlalchemy": sqlalchemy.__version__,
    }
