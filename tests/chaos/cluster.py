"""The whole system as real processes on a private PostgreSQL, for faults that kill and freeze.

Every part is a child process started the way an operator starts it (`python -m ...`, settings
from the environment): the Google emulator, two QueueService replicas, SyncService and two
workers. The workers dial both replicas through one gRPC target (`ipv4:a,b`), so losing one
replica moves them to the other without anyone touching them. Each process writes its log to a
file of its own: the chaos oracle reads SyncService's log to learn which (job, attempt) synced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from cryptography.fernet import Fernet
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET
from tests.e2e.conftest import free_port
from tests.faults.private_postgres import PrivatePostgres

ROOT = Path(__file__).resolve().parents[2]
# A start on a loaded 2-core machine; never waited for in full when the process comes up.
START_TIMEOUT = 60.0
# The shortest lease the services accept, so a lost worker's jobs come back within seconds.
LEASE_SECONDS = 5
LEASE = f"{LEASE_SECONDS}s"
WORKER_CONCURRENCY = 4


@dataclass
class Service:
    """One child process: how to start it, where it logs, how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready: str  # "grpc:<port>", "http:<url>" or "" (a worker: ready once started)
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.stopped = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited; its log:\n{self.log.read_text()[-3000:]}")
            if self._is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def _is_ready(self) -> bool:
        kind, _, where = self.ready.partition(":")
        if kind == "grpc":
            with grpc.insecure_channel(f"127.0.0.1:{where}") as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                except grpc.RpcError:
                    return False
                return answer.status == health_pb2.HealthCheckResponse.SERVING
        if kind == "http":
            try:
                return httpx.get(where, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        assert self.process is not None
        if self.stopped:
            self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.stopped = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its connections but does nothing (a long GC, a VM pause)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.stopped = False

    def restart(self) -> None:
        self.start()
        self.wait_ready()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.stopped:
            self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15)


@dataclass
class Cluster:
    """The running system: its processes by name, and how to reach them."""

    pg: PrivatePostgres
    database: str
    logs: Path
    accounts: int
    services: dict[str, Service] = field(default_factory=dict)
    emulator_port: int = 0
    queue_ports: list[int] = field(default_factory=list)
    sync_port: int = 0
    account_ids: list[str] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg.port}/{self.database}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def queue_target(self) -> str:
        """Both replicas behind one target: gRPC's resolver, not a load balancer of ours."""
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.queue_ports)

    @property
    def sync_addr(self) -> str:
        return f"127.0.0.1:{self.sync_port}"

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OTEL_TRACES_EXPORTER": "none",
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": self.database_url,
            "JWT_SECRET": TEST_JWT_SECRET,
            "TRIGGER_SECRET": TEST_TRIGGER_SECRET,
            **extra,
        }

    def _add(self, name: str, module: str, extra: Mapping[str, str], ready: str) -> Service:
        service = Service(
            name=name,
            argv=[sys.executable, "-m", module],
            env=self._env(extra),
            log=self.logs / f"{name}.log",
            ready=ready,
        )
        self.services[name] = service
        return service

    def build(self) -> None:
        self.emulator_port = free_port()
        self.queue_ports = [free_port(), free_port()]
        self.sync_port = free_port()
        self._add(
            "emulator",
            "sync_service.emulator",
            {
                "EMULATOR_PORT": str(self.emulator_port),
                "EMULATOR_SEED": "5",
                "EMULATOR_ACCOUNTS": str(self.accounts),
                "EMULATOR_LOCATIONS": "1",
                "EMULATOR_REVIEWS": "3",
                # Google's quota is not under test here: high enough never to be met.
                "EMULATOR_QUOTA_PER_MINUTE": "1000000",
            },
            f"http:{self.emulator_url}/__control/state",
        )
        for n, port in enumerate(self.queue_ports, start=1):
            self._add(
                f"queue-{n}",
                "queue_service",
                {
                    "QUEUE_LISTEN_ADDR": f"127.0.0.1:{port}",
                    "LEASE_DURATION": LEASE,
                    "REAPER_INTERVAL": "250ms",
                    "RETRY_DELAY_BASE": "100ms",
                    "PICK_FALLBACK_INTERVAL": "500ms",
                    "SCHEDULER_ENABLED": "false",
                    "GRACE_PERIOD": "1s",
                },
                f"grpc:{port}",
            )
        self._add(
            "sync",
            "sync_service",
            {
                "SYNC_LISTEN_ADDR": self.sync_addr,
                "GBP_API_ROOT": self.emulator_url,
                "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                "GBP_QUOTA_PER_MINUTE": "1000000",
                "GRACE_PERIOD": "1s",
            },
            f"grpc:{self.sync_port}",
        )
        for n in (1, 2):
            self._add(
                f"worker-{n}",
                "clients.worker",
                {
                    "QUEUE_ADDR": self.queue_target,
                    "SYNC_ADDR": self.sync_addr,
                    "WORKER_ID": f"chaos-worker-{n}",
                    # Few syncs in flight: on a small shared CI machine more only queue for CPU
                    # inside SyncService and run into their deadlines.
                    "WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
                    # worker-1, which the worker faults kill and freeze, also holds as many
                    # leased jobs it has not started (WORKER_PREFETCH): they must come back too.
                    "WORKER_PREFETCH": str(WORKER_CONCURRENCY if n == 1 else 0),
                    "LEASE_DURATION": LEASE,
                    "POLL_WAIT": "1s",
                    "JOB_TIMEOUT": "30s",
                    "SYNC_CONNECT_TIMEOUT": "500ms",
                    "CIRCUIT_BREAKER_COOLDOWN": "1s",
                    "SHUTDOWN_GRACE": "2s",
                },
                "",
            )

    def start(self) -> None:
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready()

    def heal(self) -> None:
        """Whatever a fault left behind (a frozen or dead process, injected Google faults) is
        undone before the next fault: each fault starts from a healthy system."""
        for service in self.services.values():
            if service.stopped:
                service.thaw()
            if not service.alive:
                service.restart()
        self.clear_google_faults()

    def inject_google_fault(self, **fault: object) -> None:
        httpx.post(
            f"{self.emulator_url}/__control/faults", json=fault, timeout=10
        ).raise_for_status()

    def google_requests(self, endpoint: str) -> int:
        """How many requests the emulator has had on `endpoint` (its statistics)."""
        state = httpx.get(f"{self.emulator_url}/__control/state", timeout=10).json()
        return int(state["stats"]["requests"].get(endpoint, 0))

    def clear_google_faults(self) -> None:
        httpx.delete(f"{self.emulator_url}/__control/faults", timeout=10).raise_for_status()

    def stop(self) -> None:
        for service in self.services.values():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                service.stop()
