"""Who is calling: bearer JWTs and the worker trigger secret, checked once in an interceptor.

`authorization: Bearer <JWT>` (HS256, `JWT_SECRET`; claims `sub`, `role`, `exp`) or
`x-trigger-secret: <TRIGGER_SECRET>` (counts as `service_role`). Every RPC of a service names
the roles it admits in a policy; an RPC missing from the policy is refused, so a new RPC is
closed until someone decides who may call it. Health and reflection are open.

A verified token is remembered (`TokenCache`) until its `exp` or for at most
`AUTH_TOKEN_CACHE_TTL`, so a client that sends the same token on every call pays for the
signature check once rather than per call. Entries are keyed by an HMAC of the token under
`JWT_SECRET`: the cache never holds a token, and a token is only ever found under the secret
that verified it. The trigger secret is compared in constant time on every call.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import jwt

from service_runtime.config import Env
from service_runtime.logs import BurstLog

log = logging.getLogger(__name__)

# Open to everyone: probes and grpcurl's discovery must work without credentials.
PUBLIC_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Role(enum.StrEnum):
    AUTHENTICATED = "authenticated"
    ADMIN = "admin"
    SERVICE = "service_role"


USER = frozenset({Role.AUTHENTICATED, Role.ADMIN, Role.SERVICE})
OPERATOR = frozenset({Role.ADMIN, Role.SERVICE})
WORKER = frozenset({Role.SERVICE})


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `user_id` is None for the trigger secret."""

    role: Role
    user_id: uuid.UUID | None

    @property
    def sees_everything(self) -> bool:
        """Admins and workers act across users; plain users only on what they own."""
        return self.role in OPERATOR


DEFAULT_TOKEN_CACHE_SIZE = 10_000
DEFAULT_TOKEN_CACHE_TTL = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    jwt_secret: str
    trigger_secret: str
    # Leeway for clock skew between the token issuer and this server.
    leeway_seconds: int = 30
    # Verified tokens remembered at most this many (0: verify every call) and this long.
    token_cache_size: int = DEFAULT_TOKEN_CACHE_SIZE
    token_cache_ttl: timedelta = DEFAULT_TOKEN_CACHE_TTL

    @classmethod
    def from_env(cls, env: Env | None = None) -> AuthSettings:
        """JWT_SECRET, TRIGGER_SECRET, AUTH_TOKEN_CACHE_SIZE and AUTH_TOKEN_CACHE_TTL."""
        env = env or Env()
        return cls(
            jwt_secret=env.str("JWT_SECRET", ""),
            trigger_secret=env.str("TRIGGER_SECRET", ""),
            token_cache_size=env.int(
                "AUTH_TOKEN_CACHE_SIZE", DEFAULT_TOKEN_CACHE_SIZE, minimum=0, maximum=10_000_000
            ),
            token_cache_ttl=env.duration(
                "AUTH_TOKEN_CACHE_TTL",
                DEFAULT_TOKEN_CACHE_TTL,
                minimum=timedelta(seconds=1),
                maximum=timedelta(hours=1),
            ),
        )


class AuthError(Exception):
    """Credentials were missing or not valid."""


_current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    """The caller of the RPC being served. Only valid inside a handler."""
    return _current_principal.get()


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    # Seconds since the epoch at which the entry stops answering: the token's exp, or sooner.
    until: float


class TokenCache:
    """A bounded LRU of verified bearer tokens, each kept until its exp (at most `ttl`).

    A hit is only ever a token that passed the full check under the same secret; an entry
    that reached its `until` is dropped and the token is checked again (and refused if it
    expired). The least recently used entry makes room when `max_size` is reached.
    """

    def __init__(self, max_size: int, ttl: timedelta) -> None:
        self.max_size = max_size
        self.ttl_seconds = ttl.total_seconds()
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(secret: str, token: str) -> bytes:
        return hmac.digest(secret.encode(), token.encode(), hashlib.sha256)

    def get(self, key: bytes, now: float) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.principal

    def put(self, key: bytes, principal: Principal, *, expires_at: float, now: float) -> None:
        until = min(expires_at, now + self.ttl_seconds)
        if self.max_size <= 0 or until <= now:
            return
        self._entries[key] = _Verified(principal, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)


def authenticate(
    metadata: Any,
    settings: AuthSettings,
    *,
    cache: TokenCache | None = None,
    now: float | None = None,
) -> Principal:
    """Turns request metadata into a Principal, or raises AuthError saying why not.

    `now` (seconds since the epoch) is when the token's exp is checked against; `cache`
    remembers verified tokens between calls.
    """
    trigger = _metadata_value(metadata, "x-trigger-secret")
    if trigger is not None:
        if settings.trigger_secret and hmac.compare_digest(
            trigger.encode(), settings.trigger_secret.encode()
        ):
            return Principal(role=Role.SERVICE, user_id=None)
        raise AuthError("x-trigger-secret is not valid")

    header = _metadata_value(metadata, "authorization")
    if header is None:
        raise AuthError(
            "no credentials: send 'authorization: Bearer <JWT>' or 'x-trigger-secret: <secret>'"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("authorization header must be 'Bearer <JWT>'")
    if not settings.jwt_secret:
        raise AuthError("this server accepts no JWTs: JWT_SECRET is not set")
    now = time.time() if now is None else now
    key = TokenCache.key(settings.jwt_secret, token) if cache is not None else b""
    if cache is not None and (known := cache.get(key, now)) is not None:
        return known
    principal, expires_at = _verify(token, settings, now)
    if cache is not None:
        cache.put(key, principal, expires_at=expires_at, now=now)
    return principal


def _verify(token: str, settings: AuthSettings, now: float) -> tuple[Principal, float]:
    """The full check of a bearer token: the principal and the token's exp."""
    try:
        # Pinning the algorithm list rejects `alg: none` and key-confusion tokens. exp is
        # checked below against `now`, with PyJWT's rule, so the cache and this agree.
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub", "role"], "verify_exp": False},
            leeway=settings.leeway_seconds,
        )
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"token not valid: {exc}") from None
    try:
        expires_at = int(claims["exp"])
    except (ValueError, TypeError, OverflowError):
        raise AuthError("token not valid: 'exp' must be an integer") from None
    if expires_at <= now - settings.leeway_seconds:
        raise AuthError("token expired: get a new one")
    try:
        role = Role(claims["role"])
    except ValueError:
        raise AuthError(
            f"token role {claims['role']!r} is not one of {[r.value for r in Role]}"
        ) from None
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError:
        raise AuthError("token 'sub' must be a user UUID") from None
    return Principal(role=role, user_id=user_id), float(expires_at)


def issue_token(
    secret: str, *, user_id: uuid.UUID | str, role: Role | str, ttl_seconds: int = 3600
) -> str:
    """A signed HS256 token, for development, tests and the demo in `make run`."""
    now = int(time.time())
    claims = {"sub": str(user_id), "role": str(Role(role)), "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")


# A refusal repeated within this many seconds is logged once, with how many were held back.
REFUSAL_LOG_WINDOW = 60.0


def _deny(
    code: grpc.StatusCode, message: str, method: str, refusals: BurstLog
) -> grpc.RpcMethodHandler:
    """A handler that refuses the call, and logs the refusal: the code, the RPC, the peer and
    the reason. The reason is our own message, which never quotes a token or a secret."""
    rpc = method.rsplit("/", 1)[-1]

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        refusals.warning(
            f"{code.name} {rpc} {message}",
            "refused %s from %s: %s: %s",
            rpc,
            context.peer(),
            code.name,
            message,
        )
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call and admits it only for the roles its RPC's policy names.

    The admitted caller is set in a context variable that the handler reads with
    `current_principal()`. grpc.aio runs the interceptors and the handler of a call in that
    call's own task, so the handler sees exactly its caller without a wrapper being built per
    call; were a handler ever run elsewhere it would find no principal and fail closed.
    """

    def __init__(
        self,
        settings: AuthSettings,
        policy: Mapping[str, frozenset[Role]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._policy = dict(policy)
        self._clock = clock
        self.token_cache = TokenCache(settings.token_cache_size, settings.token_cache_ttl)
        # Refusals are logged once per burst of the same refusal: a client retrying a stale
        # token in a loop must not fill the log, but an operator must see that it happens.
        self._refusals = BurstLog(log, window=REFUSAL_LOG_WINDOW)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method.startswith(PUBLIC_SERVICE_PREFIXES):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return handler
        try:
            principal = authenticate(
                handler_call_details.invocation_metadata,
                self._settings,
                cache=self.token_cache,
                now=self._clock(),
            )
        except AuthError as exc:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, str(exc), method, self._refusals)
        allowed = self._policy.get(method)
        if allowed is None:
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not open to any role",
                method,
                self._refusals,
            )
        if principal.role not in allowed:
            roles = " or ".join(sorted(r.value for r in allowed))
            rpc = method.rsplit("/", 1)[-1]
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{rpc} needs role {roles}; the caller is {principal.role.value}",
                method,
                self._refusals,
            )
        _current_principal.set(principal)
        return handler
