"""Encrypted sample uploads: training data and the hold-out set.

Runs in: host. An upload is acknowledged only after its blob is durable and
its row committed; the same bytes again return the same upload (200, not a
duplicate). Everything is checked before anything is stored: the body's
size (from Content-Length, then while streaming), the batches' parameter
digest and key id against the tenant's context, layouts, sample and feature
counts, and every ciphertext.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from ...learn.wire import decode_samples
from .. import crud
from ..blobs import sha256_hex
from ..db import Role, UploadKind
from ..deps import FORBIDDEN, ContributorDep, OwnerDep, ServicesDep, SessionDep, read_body
from ..schemas import UploadPublic
from ..wire import CBOR, check_samples
from . import binary_body, model_or_404, not_found

router = APIRouter(tags=["uploads"])


@router.post(
    "/v1/models/{model_id}/uploads",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=binary_body(CBOR, "cipherloop.learn.wire.encode_samples(features, labels)"),
    responses={200: {"description": "These bytes were uploaded before (idempotent)",
                     "model": UploadPublic}},
)
async def upload_samples(model_id: str, request: Request, response: Response,
                         principal: ContributorDep, session: SessionDep, services: ServicesDep,
                         kind: UploadKind = UploadKind.DATA) -> UploadPublic:
    """Upload encrypted samples (owner or contributor; hold-out sets: owner only).

    201 when stored now, 200 when the same bytes were stored before.
    """
    if kind is UploadKind.HOLDOUT and principal.role is not Role.OWNER:
        raise HTTPException(status.HTTP_403_FORBIDDEN, FORBIDDEN)
    tenant_id = principal.tenant_id
    model = model_or_404(session, tenant_id=tenant_id, model_id=model_id)
    context = crud.get_context(session, tenant_id=tenant_id, context_id=model.context_id)
    assert context is not None
    limit = services.settings.max_body_bytes
    body = await read_body(request, limit=limit)

    def store() -> tuple[UploadPublic, bool]:
        digest = sha256_hex(body)
        seen = crud.find_upload(session, tenant_id=tenant_id, model_id=model_id, sha256=digest)
        if seen is None:  # new bytes: check everything before storing anything
            features, labels = decode_samples(body, max_bytes=limit)
            n_samples = check_samples(services.contexts.get(context.sha256), features, labels,
                                      n_features=model.n_features)
            services.blobs.put(body)  # durable before the row that names it
        else:
            n_samples = seen.n_samples
        row, created = crud.add_upload(session, tenant_id=tenant_id, model_id=model_id,
                                       kind=kind, sha256=digest, nbytes=len(body),
                                       n_samples=n_samples, token_id=principal.token_id)
        return UploadPublic.model_validate(row), created

    out, created = await run_in_threadpool(store)
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("/v1/models/{model_id}/uploads")
def list_uploads(model_id: str, principal: OwnerDep, session: SessionDep) -> list[UploadPublic]:
    """The model's uploads, oldest first, with the round that used each (owner only)."""
    model_or_404(session, tenant_id=principal.tenant_id, model_id=model_id)
    rows = crud.list_uploads(session, tenant_id=principal.tenant_id, model_id=model_id)
    return [UploadPublic.model_validate(u) for u in rows]


@router.get("/v1/models/{model_id}/uploads/{upload_id}")
def get_upload(model_id: str, upload_id: str, principal: OwnerDep,
               session: SessionDep) -> UploadPublic:
    """One upload's metadata (owner only)."""
    row = crud.get_upload(session, tenant_id=principal.tenant_id, model_id=model_id,
                          upload_id=upload_id)
    if row is None:
        raise not_found()
    return UploadPublic.model_validate(row)
