"""Encrypted inference: encrypted features in, encrypted scores out.

Runs in: host. The owner, or a party holding a predict token, sends a
feature batch encrypted under the tenant's key; the service computes the
logits ``X @ w + b`` on ciphertexts with the current (or a named) version
and returns them as a ciphertext batch only the key holder can read.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ...ckks import CiphertextBatch
from ...learn.wire import require_one_cbor_item
from .. import crud
from ..deps import PredictorDep, ServicesDep, SessionDep, read_body
from ..wire import BINARY
from . import binary_body, binary_response, model_or_404, not_found

router = APIRouter(tags=["predict"])


@router.post(
    "/v1/models/{model_id}/predict",
    response_class=Response,
    openapi_extra=binary_body(BINARY, "CiphertextBatch bytes of features (diagonal layout)"),
    responses=binary_response(BINARY, "CiphertextBatch bytes of logits (sample blocks)"),
)
async def predict(model_id: str, request: Request, principal: PredictorDep,
                  session: SessionDep, services: ServicesDep,
                  version_id: str | None = None) -> Response:
    """Encrypted scores for encrypted features (owner or predict token).

    ``version_id`` picks a stored version; the current one by default.
    """
    tenant_id = principal.tenant_id
    model = model_or_404(session, tenant_id=tenant_id, model_id=model_id)
    version_id = version_id or model.current_version_id
    version = None if version_id is None else crud.get_version(
        session, tenant_id=tenant_id, model_id=model_id, version_id=version_id)
    if version is None:
        raise not_found()
    context = crud.get_context(session, tenant_id=tenant_id, context_id=model.context_id)
    assert context is not None
    limit = services.settings.max_body_bytes
    body = await read_body(request, limit=limit)

    def run() -> bytes:
        require_one_cbor_item(body)
        features = CiphertextBatch.from_bytes(body, max_bytes=limit)
        ctx = services.contexts.get(context.sha256)
        scores = services.refiner.predict(ctx, services.blobs.read(version.sha256), features)
        return scores.to_bytes()

    return Response(await run_in_threadpool(run), media_type=BINARY)
