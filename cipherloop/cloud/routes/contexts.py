"""Public CKKS contexts: what every upload of a tenant is checked against.

Runs in: host. The owner registers its public context (public,
relinearisation and Galois keys; tens of MB). The service stores a
re-serialised copy, so extra fields in the upload -- a secret key sent by
mistake included -- never reach the disk. A key belongs to one tenant.
Any of the tenant's tokens may download it: contributors encrypt with it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from starlette.concurrency import run_in_threadpool

from .. import crud
from ..deps import AnyRoleDep, OwnerDep, ServicesDep, SessionDep, read_body
from ..schemas import ContextPublic
from ..wire import BINARY, load_public_context
from . import binary_body, binary_response, not_found

router = APIRouter(tags=["contexts"])


@router.post(
    "/v1/contexts",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=binary_body(BINARY, "PublicContext.serialize() bytes"),
    responses={200: {"description": "This key was registered before (idempotent)",
                     "model": ContextPublic}},
)
async def register_context(request: Request, response: Response, principal: OwnerDep,
                           session: SessionDep, services: ServicesDep) -> ContextPublic:
    """Register the tenant's public context (owner only); 200 if already registered."""
    body = await read_body(request, limit=services.settings.max_body_bytes)

    def store() -> tuple[ContextPublic, bool]:
        context = load_public_context(body)
        existing = crud.context_by_key(session, key_id=context.key_id)
        if existing is not None:
            if existing.tenant_id != principal.tenant_id:
                raise crud.Conflict("this key is registered to another tenant")
            return ContextPublic.model_validate(existing), False
        canonical = context.serialize()
        digest = services.blobs.put(canonical)
        row, created = crud.add_context(
            session, tenant_id=principal.tenant_id, key_id=context.key_id,
            params_digest=context.params.digest(),
            poly_modulus_degree=context.params.poly_modulus_degree,
            sha256=digest, nbytes=len(canonical))
        services.contexts.put(digest, context)
        return ContextPublic.model_validate(row), created

    out, created = await run_in_threadpool(store)
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("/v1/contexts")
def list_contexts(principal: AnyRoleDep, session: SessionDep) -> list[ContextPublic]:
    """The tenant's public contexts (any of its tokens)."""
    rows = crud.list_contexts(session, tenant_id=principal.tenant_id)
    return [ContextPublic.model_validate(c) for c in rows]


@router.get("/v1/contexts/{context_id}")
def get_context(context_id: str, principal: AnyRoleDep, session: SessionDep) -> ContextPublic:
    """One public context's metadata (any of the tenant's tokens)."""
    row = crud.get_context(session, tenant_id=principal.tenant_id, context_id=context_id)
    if row is None:
        raise not_found()
    return ContextPublic.model_validate(row)


@router.get("/v1/contexts/{context_id}/blob", response_class=Response,
            responses=binary_response(BINARY, "PublicContext.serialize() bytes"))
def download_context(context_id: str, principal: AnyRoleDep, session: SessionDep,
                     services: ServicesDep) -> Response:
    """The public context's bytes, to encrypt with (any of the tenant's tokens)."""
    row = crud.get_context(session, tenant_id=principal.tenant_id, context_id=context_id)
    if row is None:
        raise not_found()
    return Response(services.blobs.read(row.sha256), media_type=BINARY,
                    headers={"ETag": f'"{row.sha256}"'})
