"""Typed FastAPI dependencies: services, sessions, and layered authorisation.

Runs in: host. Authorisation is a stack of dependencies: a bearer token
becomes a :class:`Principal` (or one generic 401); a role check on top turns
it into :data:`OwnerDep`, :data:`ContributorDep` or :data:`PredictorDep` (or
one generic 403). Routes then scope every lookup by ``principal.tenant_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from . import crud
from .blobs import BlobStore
from .db import Role
from .keys import ContextCache
from .refiner import Refiner
from .relay import Relay
from .settings import Settings


@dataclass(frozen=True)
class Services:
    """What :func:`~cipherloop.cloud.app.create_app` builds once and every request shares."""

    settings: Settings
    sessions: sessionmaker[Session]
    blobs: BlobStore
    contexts: ContextCache
    refiner: Refiner
    relay: Relay
    health: Callable[[], Mapping[str, str]] = field(default=dict)
    """``{child: "up" | "down"}`` of the processes ``serve`` supervises ({} without any)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, through one of its tokens, in one role."""

    tenant_id: str
    token_id: str
    role: Role


class BodyTooLarge(HTTPException):
    """The request body is over the configured limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"request body exceeds the {limit}-byte limit")


UNAUTHORIZED = "missing or invalid token"
FORBIDDEN = "this token may not do that"


def _unauthorized() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED,
                         headers={"WWW-Authenticate": "Bearer"})


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An owner, contributor or predict token")
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                           description="The service's admin token (CIPHERLOOP_ADMIN_TOKEN)")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_principal(session: SessionDep, credentials: BearerDep) -> Principal:
    """The caller behind a bearer token; one generic 401 for anything wrong."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized()
    row = crud.authenticate(session, token=credentials.credentials)
    if row is None:
        raise _unauthorized()
    return Principal(tenant_id=row.tenant_id, token_id=row.id, role=Role(row.role))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency admitting only ``roles``; any other valid token gets one generic 403."""

    def check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, FORBIDDEN)
        return principal

    return check


OwnerDep = Annotated[Principal, Depends(require(Role.OWNER))]
"""The tenant's owner: may do everything for its tenant."""

ContributorDep = Annotated[Principal, Depends(require(Role.OWNER, Role.CONTRIBUTOR))]
"""May upload encrypted samples (the owner too)."""

PredictorDep = Annotated[Principal, Depends(require(Role.OWNER, Role.PREDICT))]
"""May run encrypted inference (the owner too)."""

AnyRoleDep = Annotated[Principal, Depends(require(Role.OWNER, Role.CONTRIBUTOR, Role.PREDICT))]
"""Any valid token: reads of public material (the tenant's public contexts)."""


def require_admin(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """The admin token, compared in constant time; one generic 401 otherwise."""
    if credentials is None:
        raise _unauthorized()
    given = hashlib.sha256(credentials.credentials.encode("utf-8", "surrogatepass")).digest()
    want = hashlib.sha256(services.settings.admin_token.encode()).digest()
    if not hmac.compare_digest(given, want):
        raise _unauthorized()


AdminDep = Annotated[None, Depends(require_admin)]


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit``.

    The :class:`BodyLimit` middleware refuses oversized bodies for every
    route; this check repeats it where the body is read, for bodies that
    reach a route by any other path (e.g. in tests of the route alone).
    """
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge(limit)
    return bytes(buf)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` from Content-Length, then while streaming.

    A declared length over the limit is answered 413 before a byte is read;
    a body that streams past it (chunked, or lying about its length) makes
    ``receive`` raise :class:`BodyTooLarge`, which FastAPI answers as 413.
    """

    def __init__(self, app: Any, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _json(send, status.HTTP_400_BAD_REQUEST, "malformed Content-Length")
                return
            if length > self.limit:
                await _json(send, status.HTTP_413_CONTENT_TOO_LARGE,
                            f"request body exceeds the {self.limit}-byte limit")
                return
        seen = 0
        limit = self.limit

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


async def _json(send: Any, code: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
