"""A local emulator of Google's Business Profile APIs, for tests, benchmarks and demos.

`python -m sync_service.emulator --port N` serves the OAuth token endpoint and the accounts,
locations and reviews endpoints under one root, seeded deterministically, with a control API
(`/__control/...`) and fault injection. In Python: `EmulatorServer(...)`, whose `state` is the
emulator's world (see `state.EmulatorState`).
"""

from sync_service.emulator.server import EmulatorServer
from sync_service.emulator.state import EmulatorState, Fault, FaultKind

__all__ = ["EmulatorServer", "EmulatorState", "Fault", "FaultKind"]
