"""Reading settings from environment variables, with errors that name the variable.

A bad value stops a process at start with one line that says which setting is wrong and what
it accepts, rather than a traceback minutes later.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")


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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_address(name: str, raw: str) -> str:
    """A gRPC listen or dial address: `host:port`, `[v6]:port`, or `unix:/path`."""
    value = raw.strip()
    if value.startswith("unix:") and len(value) > len("unix:"):
        return value
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if (
        not sep
        or not host
        or not port.isdigit()
        or int(port) > 65535
        or (":" in host and not bracketed)
        or any(c.isspace() for c in host)
    ):
        raise ConfigError(
            f"{name}={raw!r} is not host:port (for example 127.0.0.1:50051 or [::]:50051)"
        )
    return value


def parse_metrics_addr(name: str, raw: str) -> tuple[str, int] | None:
    """`host:port` (port 0: any free port) of a metrics endpoint, or None for empty or `off`."""
    value = raw.strip()
    if value.lower() in ("", "off", "none"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name}={raw!r} is not host:port (or empty/off for no metrics)")
    return host.strip("[]"), int(port)


class Env:
    """Typed access to a mapping of environment variables (os.environ by default).

    `read` records every setting asked for and its kind (text, int, float, duration, bool,
    address, log_level, url, or a kind named by `parsed`), so that tests can walk every
    setting a process has without a list kept by hand.

    (Below `Env.str`, the class body's `str` is that method: annotations say `builtins.str`.)
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.read: dict[str, str] = {}

    def _raw(self, name: str, kind: str) -> str:
        self.read.setdefault(name, kind)
        return self._environ.get(name, "")

    def str(self, name: str, default: str) -> str:
        """Free text (a secret, a client id, a path): any value is accepted."""
        value = self._raw(name, "text")
        return value if value.strip() else default

    def parsed(
        self,
        name: builtins.str,
        default: T,
        *,
        kind: builtins.str,
        parse: Callable[[builtins.str], T],
    ) -> T:
        """A value checked by `parse`, which raises ConfigError naming `name` (never echoing a
        secret); `default` when unset."""
        raw = self._raw(name, kind).strip()
        return parse(raw) if raw else default

    def address(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self.parsed(name, default, kind="address", parse=lambda r: parse_address(name, r))

    def log_level(self, name: builtins.str, default: builtins.str) -> builtins.str:
        def parse(raw: builtins.str) -> builtins.str:
            if raw.upper() not in LOG_LEVELS:
                raise ConfigError(f"{name}={raw!r}: use one of {', '.join(LOG_LEVELS)}")
            return raw.upper()

        return self.parsed(name, default, kind="log_level", parse=parse)

    def metrics_address(self, name: builtins.str) -> tuple[builtins.str, int] | None:
        """`host:port` of a metrics endpoint (port 0: any free port); None when empty or off."""
        return self.parsed(
            name, None, kind="metrics_address", parse=lambda r: parse_metrics_addr(name, r)
        )

    def url(self, name: builtins.str, default: builtins.str) -> builtins.str:
        """An http:// or https:// URL, without a trailing slash."""

        def parse(raw: builtins.str) -> builtins.str:
            scheme, sep, rest = raw.partition("://")
            if scheme not in ("http", "https") or not sep or not rest.strip("/"):
                raise ConfigError(f"{name}={raw!r} must be an http:// or https:// URL")
            return raw.rstrip("/")

        return self.parsed(name, default, kind="url", parse=parse)

    def int(self, name: builtins.str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self._raw(name, "int").strip()
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
        raw = self._raw(name, "float").strip()
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
        raw = self._raw(name, "duration").strip()
        if not raw:
            return default
        value = parse_duration(name, raw)
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={raw} is out of range ({minimum}..{maximum})")
        return value

    def choice(
        self, name: builtins.str, default: builtins.str, *, choices: Sequence[builtins.str]
    ) -> builtins.str:
        """One of `choices` (case-insensitive), or `default` when unset."""

        def parse(raw: builtins.str) -> builtins.str:
            value = raw.lower()
            if value not in choices:
                raise ConfigError(f"{name}={raw!r}: use one of {', '.join(choices)}")
            return value

        return self.parsed(name, default, kind="choice", parse=parse)

    def bool(self, name: builtins.str, default: bool) -> bool:
        raw = self._raw(name, "bool").strip().lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")
