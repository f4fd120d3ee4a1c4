"""A local emulator of Google's Business Profile APIs, for tests, benchmarks and demos.

`python -m sync_service.emulator --port N` serves the OAuth token endpoint and the accounts,
locations, reviews and batchGetReviews endpoints under one root, seeded deterministically,
with a control API (`/__control/...`), fault injection, per-API quotas and hooks that change
the data between two pages. In Python: `EmulatorServer(...)`, whose `state` is the emulator's
world (see `state.EmulatorState`). docs/emulator.md describes it all.

Modules: `data` (records and their JSON), `faults` (endpoints, APIs, fault kinds), `state` (the
world and its rules), `errors` (Google's error bodies), `server` (Google's endpoints),
`control` (the control API).
"""

from sync_service.emulator.data import AccountType, LocationKind
from sync_service.emulator.faults import Api, Endpoint
from sync_service.emulator.server import EmulatorServer
from sync_service.emulator.state import EmulatorState, Fault, FaultKind

__all__ = [
    "AccountType",
    "Api",
    "EmulatorServer",
    "EmulatorState",
    "Endpoint",
    "Fault",
    "FaultKind",
    "LocationKind",
]
