"""Refinement rounds: what the worker did, is doing, and will do.

Runs in: host. Rounds normally start on their own when the policy's
trigger fires; the owner may also start one on the new data now, watch
rounds, and retry a failed one (with the same data).
"""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from .. import crud
from ..db import Round
from ..deps import OwnerDep, SessionDep
from ..schemas import RoundPublic
from . import model_or_404, not_found

router = APIRouter(tags=["rounds"])


def round_public(session: Session, rnd: Round) -> RoundPublic:
    uploads = crud.round_data(session, tenant_id=rnd.tenant_id, round_id=rnd.id)
    version = crud.round_version(session, tenant_id=rnd.tenant_id, round_id=rnd.id)
    return RoundPublic(
        id=rnd.id, model_id=rnd.model_id, number=rnd.number, trigger=rnd.trigger,
        state=rnd.state, attempts=rnd.attempts, policy_id=rnd.policy_id,
        base_version_id=rnd.base_version_id,
        candidate_version_id=version.id if version is not None else None,
        upload_ids=[u.id for u in uploads], holdout_id=rnd.holdout_id, spec=rnd.spec,
        decision=rnd.decision, reason=rnd.reason, metrics=rnd.metrics, stats=rnd.stats,
        error=rnd.error, created_at=rnd.created_at, started_at=rnd.started_at,
        finished_at=rnd.finished_at)


@router.post("/v1/models/{model_id}/rounds", status_code=status.HTTP_201_CREATED)
def start_round(model_id: str, principal: OwnerDep, session: SessionDep) -> RoundPublic:
    """Start a round on all new data now, whatever the trigger says (owner only).

    409 when a round is already pending or running, when the model has no
    version yet, or when there is no new data.
    """
    model_or_404(session, tenant_id=principal.tenant_id, model_id=model_id)
    rnd = crud.create_round(session, tenant_id=principal.tenant_id, model_id=model_id,
                            trigger="manual")
    if rnd is None:
        raise not_found()
    return round_public(session, rnd)


@router.get("/v1/models/{model_id}/rounds")
def list_rounds(model_id: str, principal: OwnerDep, session: SessionDep) -> list[RoundPublic]:
    """The model's rounds, oldest first (owner only)."""
    model_or_404(session, tenant_id=principal.tenant_id, model_id=model_id)
    return [round_public(session, r) for r in
            crud.list_rounds(session, tenant_id=principal.tenant_id, model_id=model_id)]


@router.get("/v1/models/{model_id}/rounds/{round_id}")
def get_round(model_id: str, round_id: str, principal: OwnerDep,
              session: SessionDep) -> RoundPublic:
    """One round: state, inputs, verdict, metrics if released, and its candidate (owner only)."""
    rnd = crud.get_round(session, tenant_id=principal.tenant_id, model_id=model_id,
                         round_id=round_id)
    if rnd is None:
        raise not_found()
    return round_public(session, rnd)


@router.post("/v1/models/{model_id}/rounds/{round_id}/retry")
def retry_round(model_id: str, round_id: str, principal: OwnerDep,
                session: SessionDep) -> RoundPublic:
    """Run a failed round again, on the same data (owner only)."""
    rnd = crud.retry_round(session, tenant_id=principal.tenant_id, model_id=model_id,
                           round_id=round_id)
    if rnd is None:
        raise not_found()
    return round_public(session, rnd)
