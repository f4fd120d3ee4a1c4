"""The event loop the services and the worker run on: uvloop unless `EVENT_LOOP=asyncio`.

Every RPC of a gRPC asyncio server, and every job of a worker, is a handful of loop callbacks:
a draining worker schedules about seven per job. uvloop runs them in C; measured in one
process, it took 12 % off the worker's own CPU per job and 5-10 % off an EnqueueSync or a
pick and report of 64 through QueueService. Where uvloop is not installed (it has no Windows
build) the standard loop runs, as it does with `EVENT_LOOP=asyncio`, the way back should a
library ever misbehave on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from service_runtime.config import Env

T = TypeVar("T")

EVENT_LOOPS = ("uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(env: Env | None = None) -> LoopFactory | None:
    """The factory of `EVENT_LOOP`'s loop; None for the standard one. A value that is not one
    of `EVENT_LOOPS` raises ConfigError (read it with the rest of the settings)."""
    choice = (env or Env()).choice("EVENT_LOOP", "uvloop", choices=EVENT_LOOPS)
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], factory: LoopFactory | None) -> T:
    """`asyncio.run(main)` on the loop `factory` makes (the standard loop when None)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
