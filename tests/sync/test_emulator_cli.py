"""`python -m sync_service.emulator`: its options, their environment variables, and --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service_runtime.config import ConfigError, Env
from sync_service.emulator.__main__ import parse_args


def test_help_prints_the_options_and_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "sync_service.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "--messy" in done.stdout and "--api-quota" in done.stdout


def test_messy_and_api_quotas_come_from_the_command_line_or_the_environment():
    defaults = parse_args([], Env({}))
    flags = parse_args(
        ["--messy", "--api-quota", "reviews=5", "--api-quota", "account_management=2"], Env({})
    )
    env = parse_args(
        [],
        Env({"EMULATOR_MESSY": "true", "EMULATOR_API_QUOTAS": "reviews=9, business_information=4"}),
    )
    overridden = parse_args(
        ["--no-messy", "--api-quota", "reviews=1"],
        Env({"EMULATOR_MESSY": "1", "EMULATOR_API_QUOTAS": "reviews=9"}),
    )

    assert (defaults.messy, defaults.api_quotas) == (False, {})
    assert (flags.messy, flags.api_quotas) == (True, {"reviews": 5, "account_management": 2})
    assert (env.messy, env.api_quotas) == (True, {"reviews": 9, "business_information": 4})
    assert (overridden.messy, overridden.api_quotas) == (False, {"reviews": 1})


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--api-quota", "posts=3"], {}),
        (["--api-quota", "reviews=many"], {}),
        (["--api-quota", "reviews=-1"], {}),
        ([], {"EMULATOR_API_QUOTAS": "reviews"}),
        ([], {"EMULATOR_MESSY": "sometimes"}),
    ],
)
def test_bad_values_are_config_errors(argv: list[str], environ: dict[str, str]):
    with pytest.raises(ConfigError):
        parse_args(argv, Env(environ))
