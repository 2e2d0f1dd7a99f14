"""Tenants and their tokens.

Runs in: host. Tenants are created by the service's admin (admin token from
the settings); each comes with one owner token, shown once. The owner then
issues contributor tokens (upload data only) and predict tokens (encrypted
inference only) and revokes them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from ... import __version__
from .. import crud
from ..db import Role
from ..deps import AdminDep, OwnerDep, PrincipalDep, ServicesDep, SessionDep
from ..schemas import (
    Health,
    TenantCreate,
    TenantCreated,
    TenantPublic,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    Whoami,
)
from . import not_found

router = APIRouter()


@router.get("/healthz", tags=["health"], response_model=Health, responses={
    503: {"model": Health, "description": "degraded: a supervised process is down (restarting)"}})
def health(services: ServicesDep) -> Any:
    """200 ``ok`` when the service and every process it supervises are up.

    503 ``degraded`` while the enclave or the round worker is down (the
    service restarts it with backoff); ``children`` says which.
    """
    children = {k: "up" if v == "up" else "down" for k, v in services.health().items()}
    body = Health(status="ok" if all(v == "up" for v in children.values()) else "degraded",
                  version=__version__, children=children)  # type: ignore[arg-type]
    if body.status == "ok":
        return body
    return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@router.post("/v1/admin/tenants", status_code=status.HTTP_201_CREATED, tags=["admin"])
def create_tenant(body: TenantCreate, session: SessionDep, _: AdminDep) -> TenantCreated:
    """Create a tenant and its owner token (admin only). The token is shown once."""
    tenant, secret = crud.create_tenant(session, name=body.name)
    return TenantCreated(id=tenant.id, name=tenant.name, created_at=tenant.created_at,
                         owner_token=secret)


@router.get("/v1/admin/tenants", tags=["admin"])
def list_tenants(session: SessionDep, _: AdminDep) -> list[TenantPublic]:
    """Every tenant (admin only)."""
    return [TenantPublic.model_validate(t) for t in crud.list_tenants(session)]


@router.post("/v1/admin/tenants/{tenant_id}/owner-tokens", status_code=status.HTTP_201_CREATED,
             tags=["admin"])
def issue_owner_token(tenant_id: str, session: SessionDep, _: AdminDep) -> TokenCreated:
    """A further owner token for a tenant (admin only), e.g. to recover a lost one."""
    if crud.get_tenant(session, tenant_id=tenant_id) is None:
        raise not_found()
    row, secret = crud.issue_token(session, tenant_id=tenant_id, role=Role.OWNER,
                                   label="owner (issued by admin)")
    return TokenCreated.model_validate({**TokenPublic.model_validate(row).model_dump(),
                                        "token": secret})


@router.get("/v1/whoami", tags=["tenant"])
def whoami(principal: PrincipalDep, session: SessionDep) -> Whoami:
    """The tenant and role behind the presented token (any valid token)."""
    tenant = crud.get_tenant(session, tenant_id=principal.tenant_id)
    assert tenant is not None
    return Whoami(tenant_id=tenant.id, tenant_name=tenant.name, token_id=principal.token_id,
                  role=principal.role.value)


@router.post("/v1/tokens", status_code=status.HTTP_201_CREATED, tags=["tenant"])
def create_token(body: TokenCreate, principal: OwnerDep, session: SessionDep) -> TokenCreated:
    """Issue a contributor or predict token (owner only). The token is shown once."""
    row, secret = crud.issue_token(session, tenant_id=principal.tenant_id,
                                   role=Role(body.role), label=body.label)
    return TokenCreated.model_validate({**TokenPublic.model_validate(row).model_dump(),
                                        "token": secret})


@router.get("/v1/tokens", tags=["tenant"])
def list_tokens(principal: OwnerDep, session: SessionDep) -> list[TokenPublic]:
    """The tenant's tokens, without their secrets (owner only)."""
    rows = crud.list_tokens(session, tenant_id=principal.tenant_id)
    return [TokenPublic.model_validate(t) for t in rows]


@router.delete("/v1/tokens/{token_id}", tags=["tenant"])
def revoke_token(token_id: str, principal: OwnerDep, session: SessionDep) -> TokenPublic:
    """Revoke one of the tenant's tokens (owner only); it stops working at once."""
    row = crud.revoke_token(session, tenant_id=principal.tenant_id, token_id=token_id)
    if row is None:
        raise not_found()
    return TokenPublic.model_validate(row)
