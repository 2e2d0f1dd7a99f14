"""Models, their refinement policy, and their versions.

Runs in: host. A model is bound to one of the tenant's public contexts. The
owner uploads its first encrypted version, sets the policy the worker
follows, pulls any version (each with its lineage: parent, round, uploads,
policy, metrics, decision) and rolls back by setting the current version.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ...errors import ShapeError
from .. import crud
from ..blobs import sha256_hex
from ..db import Model, Version
from ..deps import AnyRoleDep, OwnerDep, ServicesDep, SessionDep, read_body
from ..schemas import (
    CurrentVersionSet,
    ModelCreate,
    ModelPublic,
    PolicyIn,
    PolicyPublic,
    PreprocessingPublic,
    VersionPublic,
)
from ..wire import BINARY, check_model_layouts
from . import binary_body, binary_response, model_or_404, not_found

router = APIRouter(tags=["models"])


def preprocessing_public(session: Session, model: Model) -> PreprocessingPublic:
    row = crud.get_preprocessing(session, tenant_id=model.tenant_id, model_id=model.id)
    if row is None:
        return PreprocessingPublic(kind="none", mean=[], scale=[])
    return PreprocessingPublic.model_validate(row)


def model_public(session: Session, model: Model) -> ModelPublic:
    policy = crud.current_policy(session, tenant_id=model.tenant_id, model_id=model.id)
    assert policy is not None
    return ModelPublic(id=model.id, name=model.name, context_id=model.context_id,
                       n_features=model.n_features, current_version_id=model.current_version_id,
                       policy=PolicyPublic.model_validate(policy),
                       preprocessing=preprocessing_public(session, model),
                       created_at=model.created_at)


def version_public(session: Session, version: Version) -> VersionPublic:
    upload_ids: list[str] = []
    holdout_id = None
    if version.round_id is not None:
        upload_ids = [u.id for u in crud.round_data(session, tenant_id=version.tenant_id,
                                                    round_id=version.round_id)]
        rnd = crud.get_round(session, tenant_id=version.tenant_id, model_id=version.model_id,
                             round_id=version.round_id)
        holdout_id = rnd.holdout_id if rnd is not None else None
    return VersionPublic(
        id=version.id, model_id=version.model_id, number=version.number,
        parent_id=version.parent_id, round_id=version.round_id, policy_id=version.policy_id,
        upload_ids=upload_ids, holdout_id=holdout_id, decision=version.decision,
        reason=version.reason, metrics=version.metrics, sha256=version.sha256,
        nbytes=version.nbytes, created_at=version.created_at)


@router.post("/v1/models", status_code=status.HTTP_201_CREATED)
def create_model(body: ModelCreate, principal: OwnerDep, session: SessionDep) -> ModelPublic:
    """Create a model on one of the tenant's contexts, with its policy (owner only)."""
    context = crud.get_context(session, tenant_id=principal.tenant_id, context_id=body.context_id)
    if context is None:
        raise not_found()
    slots = context.poly_modulus_degree // 2
    if 1 << (body.n_features - 1).bit_length() > slots:
        raise ShapeError(f"at most {slots} features fit this context's parameters")
    model = crud.create_model(session, tenant_id=principal.tenant_id, context_id=context.id,
                              name=body.name, n_features=body.n_features,
                              policy=body.policy.to_policy(),
                              preprocessing=None if body.preprocessing is None
                              else body.preprocessing.model_dump())
    return model_public(session, model)


@router.delete("/v1/models/{model_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response)
def delete_model(model_id: str, principal: OwnerDep, session: SessionDep) -> Response:
    """Delete a model with its versions, policy revisions, uploads and rounds (owner only).

    For undoing a set-up that went wrong (``cipherloop init`` does so itself).
    409 while one of its rounds is running. Stored ciphertext blobs stay (other
    rows may name the same bytes).
    """
    if not crud.delete_model(session, tenant_id=principal.tenant_id, model_id=model_id):
        raise not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/models")
def list_models(principal: OwnerDep, session: SessionDep) -> list[ModelPublic]:
    """The tenant's models (owner only)."""
    return [model_public(session, m)
            for m in crud.list_models(session, tenant_id=principal.tenant_id)]


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, principal: OwnerDep, session: SessionDep) -> ModelPublic:
    """One model, its current version and the policy in force (owner only)."""
    return model_public(session, model_or_404(session, tenant_id=principal.tenant_id,
                                              model_id=model_id))


@router.get("/v1/models/{model_id}/preprocessing")
def get_preprocessing(model_id: str, principal: AnyRoleDep,
                      session: SessionDep) -> PreprocessingPublic:
    """What to apply to raw features before encrypting them (any of the tenant's tokens).

    Contributors apply it to the samples they upload, predict clients to the
    features they score; ``kind`` ``none`` means raw features.
    """
    return preprocessing_public(session, model_or_404(session, tenant_id=principal.tenant_id,
                                                      model_id=model_id))


@router.get("/v1/models/{model_id}/policy")
def get_policy(model_id: str, principal: OwnerDep, session: SessionDep) -> PolicyPublic:
    """The refinement policy in force (owner only)."""
    model = model_or_404(session, tenant_id=principal.tenant_id, model_id=model_id)
    return model_public(session, model).policy


@router.put("/v1/models/{model_id}/policy")
def set_policy(model_id: str, body: PolicyIn, principal: OwnerDep,
               session: SessionDep) -> PolicyPublic:
    """Replace the refinement policy (owner only); earlier revisions stay in the lineage."""
    row = crud.set_policy(session, tenant_id=principal.tenant_id, model_id=model_id,
                          policy=body.to_policy())
    if row is None:
        raise not_found()
    return PolicyPublic.model_validate(row)


@router.post(
    "/v1/models/{model_id}/versions",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=binary_body(BINARY, "EncryptedModel.to_bytes() bytes"),
    responses={200: {"description": "These bytes are already a version (idempotent)",
                     "model": VersionPublic}},
)
async def upload_version(model_id: str, request: Request, response: Response,
                         principal: OwnerDep, session: SessionDep,
                         services: ServicesDep) -> VersionPublic:
    """Upload an encrypted model version; it becomes current (owner only).

    The same bytes again return the existing version (200) and change nothing.
    """
    tenant_id = principal.tenant_id
    model = model_or_404(session, tenant_id=tenant_id, model_id=model_id)
    context = crud.get_context(session, tenant_id=tenant_id, context_id=model.context_id)
    assert context is not None
    body = await read_body(request, limit=services.settings.max_body_bytes)

    def store() -> tuple[VersionPublic, bool]:
        digest = sha256_hex(body)
        seen = crud.find_version(session, tenant_id=tenant_id, model_id=model_id, sha256=digest)
        if seen is not None:
            return version_public(session, seen), False
        check_model_layouts(body)
        ctx = services.contexts.get(context.sha256)
        services.refiner.check_model(ctx, body, n_features=model.n_features)
        services.blobs.put(body)
        row = crud.add_version(session, tenant_id=tenant_id, model_id=model_id, sha256=digest,
                               nbytes=len(body))
        if row is None:
            raise not_found()
        return version_public(session, row), True

    out, created = await run_in_threadpool(store)
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("/v1/models/{model_id}/versions")
def list_versions(model_id: str, principal: OwnerDep, session: SessionDep) -> list[VersionPublic]:
    """Every version of the model, oldest first, with lineage (owner only)."""
    model_or_404(session, tenant_id=principal.tenant_id, model_id=model_id)
    return [version_public(session, v) for v in
            crud.list_versions(session, tenant_id=principal.tenant_id, model_id=model_id)]


@router.get("/v1/models/{model_id}/versions/{version_id}")
def get_version(model_id: str, version_id: str, principal: OwnerDep,
                session: SessionDep) -> VersionPublic:
    """One version and its lineage (owner only)."""
    row = crud.get_version(session, tenant_id=principal.tenant_id, model_id=model_id,
                           version_id=version_id)
    if row is None:
        raise not_found()
    return version_public(session, row)


@router.get("/v1/models/{model_id}/versions/{version_id}/blob", response_class=Response,
            responses=binary_response(BINARY, "EncryptedModel.to_bytes() bytes"))
def download_version(model_id: str, version_id: str, principal: OwnerDep, session: SessionDep,
                     services: ServicesDep) -> Response:
    """The encrypted model of one version, to decrypt at home (owner only)."""
    row = crud.get_version(session, tenant_id=principal.tenant_id, model_id=model_id,
                           version_id=version_id)
    if row is None:
        raise not_found()
    return Response(services.blobs.read(row.sha256), media_type=BINARY,
                    headers={"ETag": f'"{row.sha256}"'})


@router.put("/v1/models/{model_id}/current")
def set_current(model_id: str, body: CurrentVersionSet, principal: OwnerDep,
                session: SessionDep) -> ModelPublic:
    """Make any stored version current: roll back or forward (owner only)."""
    model = crud.set_current_version(session, tenant_id=principal.tenant_id, model_id=model_id,
                                     version_id=body.version_id)
    if model is None:
        raise not_found()
    return model_public(session, model)
