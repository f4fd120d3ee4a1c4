"""Who is calling: bearer JWTs and the worker trigger secret, checked once in an interceptor.

`authorization: Bearer <JWT>` (HS256, `JWT_SECRET`; claims `sub`, `role`, `exp`) or
`x-trigger-secret: <TRIGGER_SECRET>` (counts as `service_role`). Every RPC of a service names
the roles it admits in a policy; an RPC missing from the policy is refused, so a new RPC is
closed until someone decides who may call it. Health and reflection are open.
"""

from __future__ import annotations

import contextvars
import enum
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import jwt

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


@dataclass(frozen=True, slots=True)
class AuthSettings:
    jwt_secret: str
    trigger_secret: str
    # Leeway for clock skew between the token issuer and this server.
    leeway_seconds: int = 30


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


def authenticate(metadata: Any, settings: AuthSettings) -> Principal:
    """Turns request metadata into a Principal, or raises AuthError saying why not."""
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
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("authorization header must be 'Bearer <JWT>'")
    if not settings.jwt_secret:
        raise AuthError("this server accepts no JWTs: JWT_SECRET is not set")
    try:
        # Pinning the algorithm list rejects `alg: none` and key-confusion tokens.
        claims = jwt.decode(
            token.strip(),
            settings.jwt_secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub", "role"]},
            leeway=settings.leeway_seconds,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired: get a new one") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"token not valid: {exc}") from None
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
    return Principal(role=role, user_id=user_id)


def issue_token(
    secret: str, *, user_id: uuid.UUID | str, role: Role | str, ttl_seconds: int = 3600
) -> str:
    """A signed HS256 token, for development, tests and the demo in `make run`."""
    now = int(time.time())
    claims = {"sub": str(user_id), "role": str(Role(role)), "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """Wraps a unary handler so the principal is set in the task that runs it."""
    behavior: Callable[..., Awaitable[Any]] = handler.unary_unary

    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _current_principal.set(principal)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        run,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call and admits it only for the roles its RPC's policy names."""

    def __init__(self, settings: AuthSettings, policy: Mapping[str, frozenset[Role]]) -> None:
        self._settings = settings
        self._policy = dict(policy)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(PUBLIC_SERVICE_PREFIXES):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return handler
        try:
            principal = authenticate(handler_call_details.invocation_metadata, self._settings)
        except AuthError as exc:
            return _deny(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        allowed = self._policy.get(method)
        if allowed is None:
            return _deny(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any role")
        if principal.role not in allowed:
            roles = " or ".join(sorted(r.value for r in allowed))
            rpc = method.rsplit("/", 1)[-1]
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{rpc} needs role {roles}; the caller is {principal.role.value}",
            )
        return _with_principal(handler, principal)
