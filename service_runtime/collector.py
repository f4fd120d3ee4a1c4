"""Python's cyclic garbage collector, set for a long-running process: `PYTHON_GC`.

With Python's own settings, the collector took 12-17 % of a draining worker's CPU (counted
with `gc.callbacks`: 50,000 jobs, a job handler that returns at once). Two things made it:

- Full collections: each walked every object the process holds, about 87,000 of them (the
  modules of grpc, protobuf, OpenTelemetry, SQLAlchemy), for 40-50 ms, about once every 4,000
  jobs, the event loop stopped meanwhile. Nearly all of those objects live as long as the
  process: `gc.freeze()` after start-up moves them to a generation the collector never walks.
- Young collections: one every 700 net allocations of tracked objects, so a few per batch of
  jobs, each walking the batch's messages, tasks and futures while they are still in use. With
  a threshold of 10,000 they die by reference count first: over a whole drain, the worker's
  young generation never reached it. Objects in reference cycles are still collected, later.

`PYTHON_GC=stock` keeps Python's settings (the way back should something depend on them).
"""

from __future__ import annotations

import gc

from service_runtime.config import Env

COLLECTOR_MODES = ("tuned", "stock")

# Net allocations of tracked objects between two collections of the youngest generation
# (Python's default is 700).
YOUNG_THRESHOLD = 10_000


def collector_mode(env: Env | None = None) -> str:
    """`PYTHON_GC`: `tuned` (the default) or `stock`. Another value raises ConfigError (read
    it with the rest of the settings)."""
    return (env or Env()).choice("PYTHON_GC", "tuned", choices=COLLECTOR_MODES)


def settle_collector(mode: str) -> None:
    """Sets the collector for `mode`; call it once start-up has imported what the process needs.

    What start-up left as garbage is collected first, so that nothing unreachable is frozen."""
    if mode != "tuned":
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
