"""Several processes of one service on one port: a supervisor that starts them and dies with them.

Python runs one thread of Python at a time, so one process uses at most one core. To use more,
`python -m queue_service` with QUEUE_PROCESSES=N starts N copies of itself (fresh interpreters,
never forks of this one: gRPC does not survive a fork) that each bind the same address. gRPC
sets SO_REUSEPORT on its listening sockets, so the kernel spreads incoming connections over the
copies. The supervisor only watches:

- SIGTERM or SIGINT is passed on to every copy, each drains its calls, and the supervisor exits
  0 once all have exited 0. A copy still running `kill_after` seconds later is killed.
- A copy that exits on its own is not restarted: the others are stopped and the supervisor
  exits 1, so whatever runs it (systemd, Kubernetes, Docker) sees the failure and restarts the
  whole service, instead of a silent restart loop inside it.
- If the supervisor itself is killed, the kernel sends each copy SIGTERM (Linux).

Each copy finds its number in SERVICE_PROCESS_INDEX and does not supervise.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)

#: Set by the supervisor in each copy's environment: which copy it is (0..N-1).
PROCESS_INDEX_VAR = "SERVICE_PROCESS_INDEX"

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_WATCHED = frozenset({signal.SIGCHLD, *_STOP_SIGNALS})
_PR_SET_PDEATHSIG = 1


def is_supervised() -> bool:
    """Whether this process is one of a supervisor's copies."""
    return PROCESS_INDEX_VAR in os.environ


def _in_child() -> None:
    """Runs in each copy between fork and exec: a clean signal mask, and die with the parent."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_all(processes: Iterable[subprocess.Popen[bytes]], signum: int) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signum)


def supervise(
    module: str, count: int, *, kill_after: float, environ: Mapping[str, str] | None = None
) -> int:
    """Runs `python -m <module>` `count` times and returns the exit code for all of them."""
    environ = os.environ if environ is None else environ
    # Blocked before the first copy starts, so that no exit or stop request can be missed:
    # blocked signals stay pending until sigwaitinfo takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    running: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
    for index in range(count):
        process = subprocess.Popen(  # noqa: S603  (this interpreter, a module of ours)
            [sys.executable, "-m", module],
            env={**environ, PROCESS_INDEX_VAR: str(index)},
            preexec_fn=_in_child,  # safe here: the supervisor runs no threads
        )
        running[process.pid] = (index, process)
    log.info("%s: started %d processes (pids %s)", module, count, ", ".join(map(str, running)))

    stopping = failed = False
    deadline: float | None = None

    def stop_all(signum: int) -> None:
        nonlocal stopping, deadline
        if not stopping:
            stopping = True
            deadline = time.monotonic() + kill_after
        _signal_all((p for _, p in running.values()), signum)

    while running:
        info: signal.struct_siginfo | None
        if deadline is None:
            info = signal.sigwaitinfo(_WATCHED)
        else:
            info = signal.sigtimedwait(_WATCHED, max(0.0, deadline - time.monotonic()))
            if info is None:
                log.error(
                    "%s: processes still running %.0f s after stop: killing", module, kill_after
                )
                _signal_all((p for _, p in running.values()), signal.SIGKILL)
                failed = True
                deadline = None
                continue
        if info.si_signo in _STOP_SIGNALS:
            log.info("%s: %s: stopping every process", module, signal.Signals(info.si_signo).name)
            stop_all(info.si_signo)
            continue
        # SIGCHLD: several exits may have been folded into one signal, so look at every copy.
        for pid, (index, process) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[pid]
            if not stopping:
                log.error(
                    "%s: process %d (pid %d) exited with code %d while serving; stopping the "
                    "others (none is restarted here: restart the service)",
                    module,
                    index,
                    pid,
                    code,
                )
                failed = True
                stop_all(signal.SIGTERM)
            elif code != 0:
                log.error("%s: process %d (pid %d) exited with code %d", module, index, pid, code)
                failed = True
    return 1 if failed else 0
