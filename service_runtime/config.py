"""Reading settings from environment variables, with errors that name the variable.

A bad value stops a process at start with one line that says which setting is wrong and what
it accepts, rather than a traceback minutes later.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Mapping
from datetime import timedelta


class ConfigError(ValueError):
    """A setting has a value the process cannot run with."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(name: str, raw: str) -> timedelta:
    """Parses `250ms`, `45s`, `10m`, `1h`, `30d` or a bare number of seconds."""
    match = _DURATION.match(raw)
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a duration (examples: 500ms, 45s, 10m, 1h, 30d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


class Env:
    """Typed access to a mapping of environment variables (os.environ by default).

    (Below `Env.str`, the class body's `str` is that method: annotations say `builtins.str`.)
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def str(self, name: str, default: str) -> str:
        value = self._environ.get(name, "")
        return value if value.strip() else default

    def int(self, name: builtins.str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={value} is out of range ({minimum}..{maximum})")
        return value

    def float(self, name: builtins.str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={value} is out of range ({minimum}..{maximum})")
        return value

    def duration(
        self, name: builtins.str, default: timedelta, *, minimum: timedelta, maximum: timedelta
    ) -> timedelta:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        value = parse_duration(name, raw)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={raw} is out of range ({minimum}..{maximum})")
        return value

    def bool(self, name: builtins.str, default: bool) -> bool:
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")
