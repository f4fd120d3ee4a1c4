"""Verified bearer tokens are remembered until they expire, never longer, never across secrets.

`now` is passed explicitly, so expiry is tested at exact instants without waiting.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import jwt
import pytest

from service_runtime import auth
from service_runtime.auth import AuthError, AuthSettings, Role, TokenCache, authenticate
from service_runtime.config import ConfigError, Env
from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET, WORKER_METADATA
from tests.runtime.echo import WHO_AM_I, call, echo_server

OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256!"
T0 = float(int(time.time()))
USER = uuid.UUID("00000000-0000-4000-8000-00000000cace")


def settings(**overrides: object) -> AuthSettings:
    values: dict[str, object] = {
        "jwt_secret": TEST_JWT_SECRET,
        "trigger_secret": TEST_TRIGGER_SECRET,
        "leeway_seconds": 0,
    }
    values.update(overrides)
    return AuthSettings(**values)  # type: ignore[arg-type]


def token(*, exp: float, user: uuid.UUID = USER, secret: str = TEST_JWT_SECRET) -> str:
    claims = {"sub": str(user), "role": "authenticated", "iat": int(T0), "exp": int(exp)}
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(raw: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {raw}"),)


@pytest.fixture
def verifications(monkeypatch) -> list[str]:
    """Every full verification (jwt.decode) of a token, as the tokens verified."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(raw, *args, **kwargs):
        seen.append(raw)
        return decode(raw, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return seen


def cache(size: int = 100, ttl: timedelta = timedelta(minutes=5)) -> TokenCache:
    return TokenCache(size, ttl)


def test_a_cached_token_is_answered_without_verifying_it_again(verifications):
    tokens = cache()
    raw = token(exp=T0 + 100)

    for now in (T0, T0 + 1, T0 + 99):
        principal = authenticate(bearer(raw), settings(), cache=tokens, now=now)
        assert principal.user_id == USER
        assert principal.role == Role.AUTHENTICATED

    assert verifications == [raw]


def test_a_cached_token_still_expires_at_its_exp(verifications):
    tokens = cache()
    raw = token(exp=T0 + 100)
    authenticate(bearer(raw), settings(), cache=tokens, now=T0)

    with pytest.raises(AuthError, match="expired"):
        authenticate(bearer(raw), settings(), cache=tokens, now=T0 + 100)
    assert len(tokens) == 0
    assert verifications == [raw, raw]


def test_within_the_clock_skew_leeway_an_expired_token_is_verified_every_time(verifications):
    tokens = cache()
    raw = token(exp=T0 + 100)
    skewed = settings(leeway_seconds=30)

    # Past exp but within the leeway: accepted, as without a cache, but never remembered.
    for now in (T0 + 100, T0 + 129):
        assert authenticate(bearer(raw), skewed, cache=tokens, now=now).user_id == USER
    assert len(tokens) == 0
    with pytest.raises(AuthError, match="expired"):
        authenticate(bearer(raw), skewed, cache=tokens, now=T0 + 130)
    assert verifications == [raw, raw, raw]


def test_a_token_is_remembered_for_at_most_the_cache_ttl(verifications):
    tokens = cache(ttl=timedelta(minutes=5))
    raw = token(exp=T0 + 3600)

    authenticate(bearer(raw), settings(), cache=tokens, now=T0)
    authenticate(bearer(raw), settings(), cache=tokens, now=T0 + 299)
    assert verifications == [raw]
    authenticate(bearer(raw), settings(), cache=tokens, now=T0 + 300)
    assert verifications == [raw, raw]


def test_a_token_is_never_accepted_from_the_cache_under_another_secret():
    tokens = cache()
    raw = token(exp=T0 + 3600)
    authenticate(bearer(raw), settings(), cache=tokens, now=T0)

    # The same cache consulted by a server with another secret: the token is checked, and
    # refused, as if it had never been seen.
    with pytest.raises(AuthError, match="not valid"):
        authenticate(bearer(raw), settings(jwt_secret=OTHER_SECRET), cache=tokens, now=T0)
    # The same claims signed with another secret are another token: refused too.
    forged = token(exp=T0 + 3600, secret=OTHER_SECRET)
    with pytest.raises(AuthError, match="not valid"):
        authenticate(bearer(forged), settings(), cache=tokens, now=T0)


def test_the_cache_is_bounded_and_drops_the_least_recently_used_token(verifications):
    tokens = cache(size=3)
    raws = [token(exp=T0 + 3600, user=uuid.uuid4()) for _ in range(4)]
    for raw in raws[:3]:
        authenticate(bearer(raw), settings(), cache=tokens, now=T0)
    authenticate(bearer(raws[0]), settings(), cache=tokens, now=T0)  # used again: kept

    authenticate(bearer(raws[3]), settings(), cache=tokens, now=T0)

    assert len(tokens) == 3
    verifications.clear()
    for raw in (raws[0], raws[2], raws[3]):
        authenticate(bearer(raw), settings(), cache=tokens, now=T0)
    assert verifications == []
    authenticate(bearer(raws[1]), settings(), cache=tokens, now=T0)
    assert verifications == [raws[1]]
    assert len(tokens) == 3


def test_a_cache_of_size_zero_verifies_every_call(verifications):
    tokens = cache(size=0)
    raw = token(exp=T0 + 3600)
    for _ in range(3):
        authenticate(bearer(raw), settings(), cache=tokens, now=T0)

    assert len(tokens) == 0
    assert verifications == [raw, raw, raw]


def test_the_trigger_secret_is_checked_on_every_call_and_never_cached():
    tokens = cache()
    assert authenticate(WORKER_METADATA, settings(), cache=tokens, now=T0).role == Role.SERVICE
    assert len(tokens) == 0
    with pytest.raises(AuthError):
        authenticate((("x-trigger-secret", "wrong"),), settings(), cache=tokens, now=T0)


def test_the_cache_holds_no_token():
    tokens = cache()
    raw = token(exp=T0 + 3600)
    authenticate(bearer(raw), settings(), cache=tokens, now=T0)

    (key,) = tokens._entries
    assert raw.encode() not in key
    assert key == TokenCache.key(TEST_JWT_SECRET, raw)


async def test_a_server_verifies_a_token_once_for_many_calls(auth_settings, verifications):
    raw = token(exp=time.time() + 3600)
    async with echo_server(auth_settings) as (_echo, channel, interceptor):
        for _ in range(3):
            assert await call(channel, WHO_AM_I, bearer(raw)) == str(USER).encode()

    assert verifications == [raw]
    assert interceptor is not None and len(interceptor.token_cache) == 1


def test_cache_settings_come_from_the_environment():
    configured = AuthSettings.from_env(
        Env({"JWT_SECRET": "s", "AUTH_TOKEN_CACHE_SIZE": "50", "AUTH_TOKEN_CACHE_TTL": "30s"})
    )
    assert configured.token_cache_size == 50
    assert configured.token_cache_ttl == timedelta(seconds=30)
    defaults = AuthSettings.from_env(Env({}))
    assert defaults.token_cache_size == 10_000
    assert defaults.token_cache_ttl == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTH_TOKEN_CACHE_SIZE", "-1"),
        ("AUTH_TOKEN_CACHE_SIZE", "many"),
        ("AUTH_TOKEN_CACHE_TTL", "0s"),
        ("AUTH_TOKEN_CACHE_TTL", "2h"),
    ],
)
def test_bad_cache_settings_are_config_errors_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        AuthSettings.from_env(Env({name: value}))
