"""`--help` for the entry points: argparse parsers whose help lists the environment variables a
process reads, with their defaults.

The variables of a settings class are not written out by hand: `variables_read` runs its
`from_env` over an empty environment through `RecordingEnv`, which notes every variable asked
for and its default. The help therefore lists exactly what the code reads, and a setting added
later shows up without anyone remembering to document it here.
"""

from __future__ import annotations

import argparse
import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from service_runtime.config import Env

# Read outside a settings class (service_runtime.database, service_runtime.telemetry,
# service_runtime.eventloop, service_runtime.collector).
DATABASE_VARIABLE = ("DATABASE_URL", "SQLite file under ./var/")
EVENT_LOOP_VARIABLE = ("EVENT_LOOP", "uvloop (asyncio where uvloop is not installed)")
COLLECTOR_VARIABLE = ("PYTHON_GC", "tuned")
TRACING_VARIABLES = (
    ("OTEL_TRACES_EXPORTER", "none (otlp if an endpoint is set)"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
    ("OTEL_SERVICE_NAME", ""),
    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
    ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
)


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    default: str


def format_default(value: object) -> str:
    """A default as an operator would write it: `30d`, `5s`, `250ms`, `true`; None is unset."""
    if value is None:
        return ""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{seconds * 1000:g}ms"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RecordingEnv(Env):
    """An `Env` over no variables that notes each variable asked for and its default."""

    def __init__(self) -> None:
        super().__init__({})
        self.read: dict[str, str] = {}

    def _note(self, name: str, default: object) -> None:
        self.read.setdefault(name, format_default(default))

    # The same signatures as Env's (`builtins.str`: below `str`, the name is the method).
    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        self._note(name, default)
        return super().str(name, default)

    def int(self, name: builtins.str, default: int, *, minimum: int, maximum: int) -> int:
        self._note(name, default)
        return super().int(name, default, minimum=minimum, maximum=maximum)

    def float(self, name: builtins.str, default: float, *, minimum: float, maximum: float) -> float:
        self._note(name, default)
        return super().float(name, default, minimum=minimum, maximum=maximum)

    def duration(
        self, name: builtins.str, default: timedelta, *, minimum: timedelta, maximum: timedelta
    ) -> timedelta:
        self._note(name, default)
        return super().duration(name, default, minimum=minimum, maximum=maximum)

    def bool(self, name: builtins.str, default: bool) -> bool:
        self._note(name, default)
        return super().bool(name, default)


def variables_read(from_env: Callable[[Env], object]) -> list[Variable]:
    """The variables `from_env` reads, in the order it reads them, with their defaults."""
    env = RecordingEnv()
    from_env(env)
    return [Variable(name, default) for name, default in env.read.items()]


def environment_epilog(variables: Iterable[Variable | tuple[str, str]]) -> str:
    """The help's closing section: one variable a line, with its default."""
    rows = [v if isinstance(v, Variable) else Variable(*v) for v in variables]
    width = max(len(v.name) for v in rows)
    lines = ["environment variables (default):"]
    for v in rows:
        lines.append(f"  {v.name:<{width}}  {v.default or '(unset)'}")
    lines.append("Durations: 500ms, 45s, 10m, 1h, 30d. A bad value stops the process (exit 2).")
    return "\n".join(lines)


class _EnvironmentHelpParser(argparse.ArgumentParser):
    """Builds its epilog only when help is printed: listing a settings class's variables runs
    its `from_env`, which must not run (and fail on a bad setting) on every start."""

    def __init__(
        self,
        variables: Callable[[], Iterable[Variable | tuple[str, str]]] | None = None,
        **kw: Any,
    ) -> None:
        # Sub-command parsers are made with the parent's class and no variables of their own.
        super().__init__(**kw)
        self._variables = variables

    def format_help(self) -> str:
        if self.epilog is None and self._variables is not None:
            self.epilog = environment_epilog(self._variables())
        return super().format_help()


def parser_with_environment(
    prog: str,
    description: str,
    variables: Iterable[Variable | tuple[str, str]]
    | Callable[[], Iterable[Variable | tuple[str, str]]],
) -> argparse.ArgumentParser:
    """An argparse parser whose help ends with the environment variables and defaults (given,
    or a callable that lists them when help is asked for)."""
    listed = variables if callable(variables) else (lambda: variables)
    return _EnvironmentHelpParser(
        variables=listed,
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
