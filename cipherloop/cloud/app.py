"""The FastAPI application: composed from settings, one router per concern.

Runs in: host. :func:`create_app` builds everything a request needs (engine,
blob store, context cache) from the settings it is given and the refiner it
is handed; nothing is built at import time, so tests need no environment.
Errors of every layer reach the client through one exception handler as
``{"detail": "..."}`` with a status from one table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import (
    AttestationError,
    CipherloopError,
    EnclaveError,
    EnclaveUnavailable,
    InvalidCiphertext,
    KeyMaterialError,
    PolicyViolation,
    ProtocolError,
    ProvisioningFailed,
    ShapeError,
)
from .blobs import BlobCorrupted, BlobStore
from .crud import Conflict
from .db import make_engine, make_sessionmaker
from .deps import BodyLimit, Services
from .keys import ContextCache
from .refiner import Refiner
from .relay import PROVISIONING_FAILED, EnclaveLink, Relay
from .routes import contexts, models, predict, rounds, tenants, uploads
from .routes import enclave as enclave_routes
from .schemas import ErrorOut
from .settings import Settings

log = logging.getLogger("cipherloop.cloud")

# Most specific first: the first class an exception is an instance of decides.
ERROR_STATUS: tuple[tuple[type[Exception], int, str | None], ...] = (
    (PolicyViolation, status.HTTP_403_FORBIDDEN, None),
    (EnclaveUnavailable, status.HTTP_503_SERVICE_UNAVAILABLE, None),
    (EnclaveError, status.HTTP_409_CONFLICT, None),
    (InvalidCiphertext, status.HTTP_422_UNPROCESSABLE_CONTENT, None),  # ParameterMismatch too
    (ShapeError, status.HTTP_422_UNPROCESSABLE_CONTENT, None),
    (KeyMaterialError, status.HTTP_422_UNPROCESSABLE_CONTENT, None),
    (ProtocolError, status.HTTP_502_BAD_GATEWAY, None),
    # Relayed provisioning: the owner's session or envelope was refused. One message.
    (ProvisioningFailed, status.HTTP_400_BAD_REQUEST, PROVISIONING_FAILED),
    (AttestationError, status.HTTP_400_BAD_REQUEST, None),
    (Conflict, status.HTTP_409_CONFLICT, None),
    (CipherloopError, status.HTTP_400_BAD_REQUEST, None),
    # Never echo these: their messages may name paths or SQL.
    (BlobCorrupted, status.HTTP_500_INTERNAL_SERVER_ERROR, "stored data is damaged"),
    (OperationalError, status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable"),
    (FileNotFoundError, status.HTTP_500_INTERNAL_SERVER_ERROR, "stored data is missing"),
    (OSError, status.HTTP_503_SERVICE_UNAVAILABLE, "storage unavailable"),
)


def status_for(exc: Exception) -> tuple[int, str]:
    """The HTTP status and client message for an exception of any layer.

    Examples
    --------
    >>> status_for(PolicyViolation("no release"))
    (403, 'no release')
    """
    for kind, code, message in ERROR_STATUS:
        if isinstance(exc, kind):
            return code, message if message is not None else str(exc) or kind.__name__
    return status.HTTP_500_INTERNAL_SERVER_ERROR, "internal error"


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one exception handler: map to a status, answer ``{"detail": ...}``."""
    code, detail = status_for(exc)
    if code >= 500:
        log.warning("%s %s -> %d (%s)", request.method, request.url.path, code,
                    type(exc).__name__)
    return JSONResponse({"detail": detail}, status_code=code)


async def handle_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a malformed request, as :class:`ErrorOut`: no ``input`` echoed.

    A request field may carry a token, a challenge or an envelope; the
    error names the field (``loc``) and the rule (``msg``, ``type``), never the value.
    """
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in errors]
    return JSONResponse({"detail": jsonable_encoder(detail)},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method some route serves at ``path``, from the OpenAPI paths (cached per app)."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for template, ops in app.openapi().get("paths", {}).items():
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            table.append((re.compile(f"^{pattern}$"), {m.upper() for m in ops}))
        app.state.allow_table = table
    return {m for pattern, methods in table if pattern.match(path) for m in methods}


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """HTTP errors as :class:`ErrorOut`; a 405 lists every method the path allows.

    Starlette answers 405 from the first route whose path matched, so its
    ``Allow`` header names only that route's methods even when other routes
    on the same path take others.
    """
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = _allowed_methods(request.app, request.url.path)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


# Documented on every route: what each error status means; the body is always ErrorOut.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in (
        (400, "Refused: bad input the schema can't express, or a refused provisioning session"),
        (401, "Missing or invalid bearer token (WWW-Authenticate: Bearer)"),
        (403, "The token's role may not do this (the detail names the role needed)"),
        (404, "No such id for this tenant (a foreign id looks the same)"),
        (409, "Conflicts with the current state (e.g. a round is already running)"),
        (413, "The request body is over the service's size limit"),
        (422, "The request is malformed: a list of failed schema checks, or one message for "
              "refused ciphertexts, layouts, shapes or keys"),
        (503, "The enclave or the database is unavailable; retry later"),
    )
}


def create_app(settings: Settings, *, refiner: Refiner, engine: Engine | None = None,
               enclave: EnclaveLink | None = None,
               health: Callable[[], Mapping[str, str]] | None = None) -> FastAPI:
    """The service's ASGI application.

    Parameters
    ----------
    settings : Settings
    refiner : Refiner
        Does the encrypted work (model checks, inference); the worker uses its own.
    engine : Engine, optional
        A database engine to share; by default one is made from
        ``settings.db_url`` (tables created) and disposed at shutdown.
    enclave : EnclaveLink, optional
        The enclave that attested provisioning is relayed to (an
        :class:`~cipherloop.learn.EnclaveClient`); without one, the
        ``/v1/enclave`` endpoints answer 503.
    health : callable, optional
        ``{child: "up" | "down"}`` of the supervised processes; ``/healthz``
        answers 503 ``degraded`` while any is down.

    Returns
    -------
    FastAPI

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from cipherloop.cloud.refiner import LearnRefiner
    >>> s = Settings(admin_token="a" * 32, data_dir=Path(tempfile.mkdtemp()))
    >>> app = create_app(s, refiner=LearnRefiner())
    >>> "/v1/models" in app.openapi()["paths"]
    True
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    own_engine = engine is None
    db = make_engine(settings.db_url) if engine is None else engine
    blobs = BlobStore(settings.blob_dir)
    services = Services(settings=settings, sessions=make_sessionmaker(db), blobs=blobs,
                        contexts=ContextCache(blobs, size=settings.context_cache),
                        refiner=refiner, relay=Relay(enclave), health=health or dict)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if own_engine:
            db.dispose()

    app = FastAPI(
        title="cipherloop cloud",
        version=__version__,
        summary="Refines encrypted models on its own as encrypted data arrives.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.services = services
    for kind in (CipherloopError, Conflict, BlobCorrupted, OperationalError, OSError):
        app.add_exception_handler(kind, handle_error)
    app.add_exception_handler(RequestValidationError, handle_invalid_request)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    for module in (tenants, contexts, models, uploads, rounds, predict, enclave_routes):
        app.include_router(module.router)
    return app
