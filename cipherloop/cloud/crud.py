"""Data access: plain functions with keyword-only arguments and no HTTP in them.

Runs in: host. Every function that reads or writes tenant data takes
``tenant_id`` and filters by it, so a foreign id finds nothing -- exactly
like a missing one. The worker-facing functions (:func:`schedule_rounds`,
:func:`claim_round`, ...) work across tenants by design and carry each
round's own ``tenant_id`` into every lookup they make for it.

Functions that change state commit their own transaction: a row is
durable when the function returns. Counters are bumped with ``UPDATE ...
RETURNING`` first, which takes the model row's write lock, so number
allocation and the checks after it are serialised on SQLite and PostgreSQL
alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import (
    Context,
    Decision,
    Model,
    Policy,
    Preprocessing,
    Role,
    Round,
    RoundState,
    Tenant,
    Token,
    Upload,
    UploadKind,
    Version,
    utcnow,
)
from .policy import RefinePolicy, trigger

TOKEN_BYTES = 32


class Conflict(Exception):
    """The request contradicts stored state (HTTP 409); the message says how."""


# ----------------------------------------------------------------- tokens & tenants
def hash_token(token: str) -> str:
    """SHA-256 of a bearer token: the only form a token is stored in."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _issue(session: Session, *, tenant_id: str, role: Role, label: str) -> tuple[Token, str]:
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    row = Token(tenant_id=tenant_id, role=role.value, label=label, token_hash=hash_token(secret))
    session.add(row)
    return row, secret


def create_tenant(session: Session, *, name: str) -> tuple[Tenant, str]:
    """A new tenant and its first owner token (returned once, never stored in the clear)."""
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    _, secret = _issue(session, tenant_id=tenant.id, role=Role.OWNER, label="owner")
    session.commit()
    return tenant, secret


def list_tenants(session: Session) -> Sequence[Tenant]:
    return session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)).all()


def get_tenant(session: Session, *, tenant_id: str) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def issue_token(session: Session, *, tenant_id: str, role: Role, label: str) -> tuple[Token, str]:
    """A new token for ``tenant_id``; the secret is returned once."""
    row, secret = _issue(session, tenant_id=tenant_id, role=role, label=label)
    session.commit()
    return row, secret


def authenticate(session: Session, *, token: str) -> Token | None:
    """The active token row a presented bearer token belongs to, or ``None``."""
    digest = hash_token(token)
    row = session.scalars(
        select(Token).where(Token.token_hash == digest, Token.revoked_at.is_(None))
    ).first()
    # The lookup is by hash already; the constant-time comparison keeps the
    # final check independent of how the database compares strings.
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row


def list_tokens(session: Session, *, tenant_id: str) -> Sequence[Token]:
    return session.scalars(
        select(Token).where(Token.tenant_id == tenant_id).order_by(Token.created_at, Token.id)
    ).all()


def revoke_token(session: Session, *, tenant_id: str, token_id: str,
                 now: datetime | None = None) -> Token | None:
    row = session.scalars(
        select(Token).where(Token.tenant_id == tenant_id, Token.id == token_id)
    ).first()
    if row is None:
        return None
    if row.revoked_at is None:
        if row.role == Role.OWNER.value:
            owners = session.scalar(select(func.count(Token.id)).where(
                Token.tenant_id == tenant_id, Token.role == Role.OWNER.value,
                Token.revoked_at.is_(None)))
            if (owners or 0) <= 1:
                raise Conflict("this is the tenant's last owner token: issue another owner token "
                               "first (the admin can: POST /v1/admin/tenants/{id}/owner-tokens)")
        row.revoked_at = now or utcnow()
        session.commit()
    return row


# ------------------------------------------------------------------------ contexts
def add_context(session: Session, *, tenant_id: str, key_id: str, params_digest: str,
                poly_modulus_degree: int, sha256: str, nbytes: int) -> tuple[Context, bool]:
    """Register a public context; the same key again returns the existing row.

    Returns
    -------
    (Context, bool)
        The row, and whether it was created now.

    Raises
    ------
    Conflict
        Another tenant registered this key.
    """
    for _ in range(2):
        existing = session.scalars(select(Context).where(Context.key_id == key_id)).first()
        if existing is not None:
            if existing.tenant_id != tenant_id:
                raise Conflict("this key is registered to another tenant")
            return existing, False
        row = Context(tenant_id=tenant_id, key_id=key_id, params_digest=params_digest,
                      poly_modulus_degree=poly_modulus_degree, sha256=sha256, nbytes=nbytes)
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()  # a concurrent registration of the same key won; look again
            continue
        return row, True
    raise Conflict("this key is being registered concurrently")


def context_by_key(session: Session, *, key_id: str) -> Context | None:
    """The context registered under ``key_id``, whichever tenant it belongs to.

    The one lookup across tenants: a key belongs to a single tenant, so
    registering it must see every tenant's keys. Never return its row to
    a caller of another tenant.
    """
    return session.scalars(select(Context).where(Context.key_id == key_id)).first()


def context_for_key(session: Session, *, tenant_id: str, key_id: str) -> Context | None:
    """The tenant's context registered under ``key_id``; ``None`` if it registered no such key."""
    return session.scalars(
        select(Context).where(Context.tenant_id == tenant_id, Context.key_id == key_id)
    ).first()


def get_context(session: Session, *, tenant_id: str, context_id: str) -> Context | None:
    return session.scalars(
        select(Context).where(Context.tenant_id == tenant_id, Context.id == context_id)
    ).first()


def list_contexts(session: Session, *, tenant_id: str) -> Sequence[Context]:
    return session.scalars(
        select(Context).where(Context.tenant_id == tenant_id)
        .order_by(Context.created_at, Context.id)
    ).all()


# -------------------------------------------------------------------- models & policy
def _bump(session: Session, *, tenant_id: str, model_id: str, column: str) -> int | None:
    """Increment one of the model's counters, taking its row lock; ``None`` if no such model."""
    col = getattr(Model, column)
    return session.execute(
        update(Model)
        .where(Model.tenant_id == tenant_id, Model.id == model_id)
        .values({column: col + 1})
        .returning(col)
    ).scalar_one_or_none()


def _policy_row(*, tenant_id: str, model_id: str, number: int, policy: RefinePolicy) -> Policy:
    return Policy(tenant_id=tenant_id, model_id=model_id, number=number, **policy.to_dict())


def create_model(session: Session, *, tenant_id: str, context_id: str, name: str,
                 n_features: int, policy: RefinePolicy,
                 preprocessing: dict[str, Any] | None = None) -> Model:
    """A model bound to one of the tenant's contexts, with its first policy revision.

    ``preprocessing`` (``kind``, ``mean``, ``scale``) is stored with it, in
    the same transaction, and never changes.
    """
    model = Model(tenant_id=tenant_id, context_id=context_id, name=name, n_features=n_features,
                  policy_seq=1)
    session.add(model)
    session.flush()
    session.add(_policy_row(tenant_id=tenant_id, model_id=model.id, number=1, policy=policy))
    if preprocessing is not None:
        session.add(Preprocessing(tenant_id=tenant_id, model_id=model.id, **preprocessing))
    session.commit()
    return model


def get_preprocessing(session: Session, *, tenant_id: str, model_id: str) -> Preprocessing | None:
    return session.scalars(select(Preprocessing).where(
        Preprocessing.tenant_id == tenant_id, Preprocessing.model_id == model_id)).first()


def delete_model(session: Session, *, tenant_id: str, model_id: str) -> bool:
    """Delete a model and every row of it; ``False`` if there is no such model.

    References among its rows (versions' parents, rounds' hold-out and base,
    uploads' rounds) are cleared first, so the deletes never trip a foreign key.

    Raises
    ------
    Conflict
        One of its rounds is running.
    """
    model = get_model(session, tenant_id=tenant_id, model_id=model_id)
    if model is None:
        return False
    mine = (Round.tenant_id == tenant_id, Round.model_id == model_id)
    if session.scalar(select(func.count(Round.id)).where(
            *mine, Round.state == RoundState.RUNNING.value)):
        raise Conflict("a round of this model is running; delete it once the round ends")
    try:
        model.current_version_id = None
        session.flush()
        session.execute(update(Upload).where(Upload.tenant_id == tenant_id,
                                             Upload.model_id == model_id).values(round_id=None))
        session.execute(update(Round).where(*mine).values(holdout_id=None, base_version_id=None))
        session.execute(update(Version).where(Version.tenant_id == tenant_id,
                                              Version.model_id == model_id)
                        .values(parent_id=None, round_id=None, policy_id=None))
        for table in (Upload, Version, Round, Policy, Preprocessing):
            session.execute(delete(table).where(table.tenant_id == tenant_id,
                                                table.model_id == model_id))
        session.delete(model)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return True


def get_model(session: Session, *, tenant_id: str, model_id: str) -> Model | None:
    return session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.id == model_id)
    ).first()


def list_models(session: Session, *, tenant_id: str) -> Sequence[Model]:
    return session.scalars(
        select(Model).where(Model.tenant_id == tenant_id).order_by(Model.created_at, Model.id)
    ).all()


def current_policy(session: Session, *, tenant_id: str, model_id: str) -> Policy | None:
    """The policy revision in force: the highest-numbered one."""
    return session.scalars(
        select(Policy)
        .where(Policy.tenant_id == tenant_id, Policy.model_id == model_id)
        .order_by(Policy.number.desc())
        .limit(1)
    ).first()


def get_policy(session: Session, *, tenant_id: str, policy_id: str) -> Policy | None:
    return session.scalars(
        select(Policy).where(Policy.tenant_id == tenant_id, Policy.id == policy_id)
    ).first()


def set_policy(session: Session, *, tenant_id: str, model_id: str,
               policy: RefinePolicy) -> Policy | None:
    """Add a policy revision; older revisions stay for the lineage of older versions."""
    number = _bump(session, tenant_id=tenant_id, model_id=model_id, column="policy_seq")
    if number is None:
        session.rollback()
        return None
    row = _policy_row(tenant_id=tenant_id, model_id=model_id, number=number, policy=policy)
    session.add(row)
    session.commit()
    return row


# ------------------------------------------------------------------------ versions
def add_version(session: Session, *, tenant_id: str, model_id: str, sha256: str,
                nbytes: int) -> Version | None:
    """A version uploaded by the owner; it becomes current, its parent the previous current."""
    number = _bump(session, tenant_id=tenant_id, model_id=model_id, column="version_seq")
    if number is None:
        session.rollback()
        return None
    model = get_model(session, tenant_id=tenant_id, model_id=model_id)
    assert model is not None
    policy = current_policy(session, tenant_id=tenant_id, model_id=model_id)
    row = Version(tenant_id=tenant_id, model_id=model_id, number=number,
                  parent_id=model.current_version_id, policy_id=policy.id if policy else None,
                  decision=Decision.UPLOADED.value, reason="uploaded by the owner",
                  sha256=sha256, nbytes=nbytes)
    session.add(row)
    session.flush()
    model.current_version_id = row.id
    session.commit()
    return row


def get_version(session: Session, *, tenant_id: str, model_id: str,
                version_id: str) -> Version | None:
    return session.scalars(
        select(Version).where(Version.tenant_id == tenant_id, Version.model_id == model_id,
                              Version.id == version_id)
    ).first()


def find_version(session: Session, *, tenant_id: str, model_id: str,
                 sha256: str) -> Version | None:
    """The oldest version of this model with these exact bytes, if any."""
    return session.scalars(
        select(Version).where(Version.tenant_id == tenant_id, Version.model_id == model_id,
                              Version.sha256 == sha256)
        .order_by(Version.number).limit(1)
    ).first()


def list_versions(session: Session, *, tenant_id: str, model_id: str) -> Sequence[Version]:
    return session.scalars(
        select(Version).where(Version.tenant_id == tenant_id, Version.model_id == model_id)
        .order_by(Version.number)
    ).all()


def set_current_version(session: Session, *, tenant_id: str, model_id: str,
                        version_id: str) -> Model | None:
    """Roll back (or forward) to any stored version of the model."""
    version = get_version(session, tenant_id=tenant_id, model_id=model_id,
                          version_id=version_id)
    if version is None:
        return None
    session.execute(
        update(Model).where(Model.tenant_id == tenant_id, Model.id == model_id)
        .values(current_version_id=version.id)
    )
    session.commit()
    return get_model(session, tenant_id=tenant_id, model_id=model_id)


# ------------------------------------------------------------------------- uploads
def add_upload(session: Session, *, tenant_id: str, model_id: str, kind: UploadKind,
               sha256: str, nbytes: int, n_samples: int,
               token_id: str | None) -> tuple[Upload, bool]:
    """Record an upload whose blob is already durable; idempotent by content hash.

    Returns
    -------
    (Upload, bool)
        The row, and whether it was created now (``False``: same bytes seen before).

    Raises
    ------
    Conflict
        The same bytes were uploaded before with another kind (data vs hold-out).
    """
    for _ in range(2):
        existing = find_upload(session, tenant_id=tenant_id, model_id=model_id, sha256=sha256)
        if existing is not None:
            if existing.kind != kind.value:
                raise Conflict(f"these samples were already uploaded as {existing.kind}")
            return existing, False
        row = Upload(tenant_id=tenant_id, model_id=model_id, kind=kind.value, sha256=sha256,
                     nbytes=nbytes, n_samples=n_samples, token_id=token_id)
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()  # the same bytes arrived concurrently; return that row
            continue
        return row, True
    raise Conflict("this upload is being stored concurrently")


def find_upload(session: Session, *, tenant_id: str, model_id: str,
                sha256: str) -> Upload | None:
    """The upload of these exact bytes to this model, if any."""
    return session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.model_id == model_id,
                             Upload.sha256 == sha256)
    ).first()


def get_upload(session: Session, *, tenant_id: str, model_id: str,
               upload_id: str) -> Upload | None:
    return session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.model_id == model_id,
                             Upload.id == upload_id)
    ).first()


def list_uploads(session: Session, *, tenant_id: str, model_id: str) -> Sequence[Upload]:
    return session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.model_id == model_id)
        .order_by(Upload.created_at, Upload.id)
    ).all()


def new_data(session: Session, *, tenant_id: str, model_id: str) -> Sequence[Upload]:
    """Data uploads no round has used yet, oldest first."""
    return session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.model_id == model_id,
                             Upload.kind == UploadKind.DATA.value, Upload.round_id.is_(None))
        .order_by(Upload.created_at, Upload.id)
    ).all()


def latest_holdout(session: Session, *, tenant_id: str, model_id: str) -> Upload | None:
    """The hold-out set in force: the most recent hold-out upload."""
    return session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.model_id == model_id,
                             Upload.kind == UploadKind.HOLDOUT.value)
        .order_by(Upload.created_at.desc(), Upload.id.desc()).limit(1)
    ).first()


# -------------------------------------------------------------------------- rounds
def get_round(session: Session, *, tenant_id: str, model_id: str,
              round_id: str) -> Round | None:
    return session.scalars(
        select(Round).where(Round.tenant_id == tenant_id, Round.model_id == model_id,
                            Round.id == round_id)
    ).first()


def list_rounds(session: Session, *, tenant_id: str, model_id: str) -> Sequence[Round]:
    return session.scalars(
        select(Round).where(Round.tenant_id == tenant_id, Round.model_id == model_id)
        .order_by(Round.number)
    ).all()


def round_data(session: Session, *, tenant_id: str, round_id: str) -> Sequence[Upload]:
    """The data uploads a round consumes, in upload order."""
    return session.scalars(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.round_id == round_id)
        .order_by(Upload.created_at, Upload.id)
    ).all()


def round_version(session: Session, *, tenant_id: str, round_id: str) -> Version | None:
    """The candidate version a round wrote, if it finished."""
    return session.scalars(
        select(Version).where(Version.tenant_id == tenant_id, Version.round_id == round_id)
    ).first()


def _active_round(session: Session, *, tenant_id: str, model_id: str) -> Round | None:
    return session.scalars(
        select(Round).where(Round.tenant_id == tenant_id, Round.model_id == model_id,
                            Round.state.in_([RoundState.PENDING.value, RoundState.RUNNING.value]))
    ).first()


def create_round(session: Session, *, tenant_id: str, model_id: str, trigger: str,
                 now: datetime | None = None) -> Round | None:
    """A pending round over all new data; ``None`` if the model does not exist.

    The new data uploads are marked as this round's in the same transaction,
    so two schedulers can never give the same upload to two rounds.

    Raises
    ------
    Conflict
        A round of this model is already pending or running, the model has
        no version to refine yet, or there is no new data.
    """
    now = now or utcnow()
    number = _bump(session, tenant_id=tenant_id, model_id=model_id, column="round_seq")
    if number is None:
        session.rollback()
        return None
    try:
        model = get_model(session, tenant_id=tenant_id, model_id=model_id)
        assert model is not None
        if _active_round(session, tenant_id=tenant_id, model_id=model_id) is not None:
            raise Conflict("a round of this model is already pending or running")
        if model.current_version_id is None:
            raise Conflict("the model has no version to refine yet; upload one first")
        data = new_data(session, tenant_id=tenant_id, model_id=model_id)
        if not data:
            raise Conflict("there is no new data to refine on")
        policy = current_policy(session, tenant_id=tenant_id, model_id=model_id)
        assert policy is not None
        holdout = latest_holdout(session, tenant_id=tenant_id, model_id=model_id)
        rnd = Round(tenant_id=tenant_id, model_id=model_id, number=number, trigger=trigger,
                    state=RoundState.PENDING.value, policy_id=policy.id,
                    holdout_id=holdout.id if holdout else None, created_at=now, not_before=now)
        session.add(rnd)
        session.flush()
        ids = [u.id for u in data]
        claimed = session.execute(
            update(Upload)
            .where(Upload.tenant_id == tenant_id, Upload.id.in_(ids), Upload.round_id.is_(None))
            .values(round_id=rnd.id)
        )
        if claimed.rowcount != len(ids):  # type: ignore[attr-defined]
            raise Conflict("new data was taken by a concurrent round")
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return rnd


@dataclass(frozen=True)
class _ModelActivity:
    tenant_id: str
    model_id: str
    new_uploads: int
    new_samples: int


def schedule_rounds(session: Session, *, now: datetime | None = None) -> list[Round]:
    """Create pending rounds for every model whose policy triggers now.

    Returns
    -------
    list of Round
        The rounds created.
    """
    now = now or utcnow()
    activity = [
        _ModelActivity(t, m, int(n), int(s or 0))
        for t, m, n, s in session.execute(
            select(Upload.tenant_id, Upload.model_id, func.count(Upload.id),
                   func.sum(Upload.n_samples))
            .join(Model, (Model.tenant_id == Upload.tenant_id) & (Model.id == Upload.model_id))
            .where(Upload.kind == UploadKind.DATA.value, Upload.round_id.is_(None),
                   Model.current_version_id.is_not(None))
            .group_by(Upload.tenant_id, Upload.model_id)
        ).all()
    ]
    created: list[Round] = []
    for act in activity:
        if _active_round(session, tenant_id=act.tenant_id, model_id=act.model_id) is not None:
            continue
        policy = current_policy(session, tenant_id=act.tenant_id, model_id=act.model_id)
        model = get_model(session, tenant_id=act.tenant_id, model_id=act.model_id)
        if policy is None or model is None:
            continue
        last = session.scalar(
            select(func.max(Round.created_at))
            .where(Round.tenant_id == act.tenant_id, Round.model_id == act.model_id)
        )
        last_at = model.created_at if last is None else _aware(last)
        why = trigger(RefinePolicy.from_row(policy), new_uploads=act.new_uploads,
                      new_samples=act.new_samples, last_round_at=last_at, now=now)
        if why is None:
            continue
        try:
            rnd = create_round(session, tenant_id=act.tenant_id, model_id=act.model_id,
                               trigger=why, now=now)
        except (Conflict, IntegrityError):
            continue  # another scheduler got there first
        if rnd is not None:
            created.append(rnd)
    return created


def _aware(value: datetime) -> datetime:
    """Aggregates may bypass the column type on SQLite: re-attach UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def claim_round(session: Session, *, worker_id: str, now: datetime | None = None) -> Round | None:
    """Move the oldest due pending round to running, for this worker.

    The round's base is the model's current version at this moment, and its
    learning rate follows the policy's schedule from the rounds done so far.

    Returns
    -------
    Round or None
        The claimed round, or ``None`` when nothing is due.
    """
    now = now or utcnow()
    candidates = session.scalars(
        select(Round.id).where(Round.state == RoundState.PENDING.value, Round.not_before <= now)
        .order_by(Round.not_before, Round.created_at).limit(8)
    ).all()
    for round_id in candidates:
        current = (
            select(Model.current_version_id)
            .where(Model.tenant_id == Round.tenant_id, Model.id == Round.model_id)
            .scalar_subquery()
        )
        won = session.execute(
            update(Round)
            .where(Round.id == round_id, Round.state == RoundState.PENDING.value)
            .values(state=RoundState.RUNNING.value, attempts=Round.attempts + 1,
                    worker_id=worker_id, started_at=now, heartbeat_at=now, error=None,
                    base_version_id=current)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            continue
        rnd = session.get(Round, round_id, populate_existing=True)
        assert rnd is not None
        policy = get_policy(session, tenant_id=rnd.tenant_id, policy_id=rnd.policy_id)
        assert policy is not None
        done = session.scalar(
            select(func.count(Round.id)).where(
                Round.tenant_id == rnd.tenant_id, Round.model_id == rnd.model_id,
                Round.state == RoundState.DONE.value)
        ) or 0
        rp = RefinePolicy.from_row(policy)
        rnd.spec = {
            "learning_rate": rp.learning_rate_for(int(done)),
            "momentum": rp.momentum,
            "batch_size": rp.batch_size,
            "epochs": rp.epochs,
            "metric": rp.metric,
            "release_metric": rp.release_metric,
            "round_index": int(done),
        }
        session.commit()
        return rnd
    session.rollback()
    return None


def _owned(round_id: str, worker_id: str, attempt: int) -> Any:
    return (Round.id == round_id, Round.state == RoundState.RUNNING.value,
            Round.worker_id == worker_id, Round.attempts == attempt)


def heartbeat(session: Session, *, round_id: str, worker_id: str, attempt: int,
              now: datetime | None = None) -> bool:
    """Refresh a running round's lease; ``False`` if this worker lost it."""
    res = session.execute(
        update(Round).where(*_owned(round_id, worker_id, attempt))
        .values(heartbeat_at=now or utcnow())
    )
    session.commit()
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def finish_round(session: Session, *, round_id: str, worker_id: str, attempt: int,
                 sha256: str, nbytes: int, decision: Decision, reason: str,
                 metrics: dict[str, Any] | None, stats: dict[str, Any] | None,
                 now: datetime | None = None) -> Version | None:
    """Write the candidate version and close the round, in one transaction.

    Call only after the candidate's blob is durable. A promotion moves the
    model's current version only if it is still the round's base (the owner
    may have rolled back meanwhile); otherwise the candidate is kept.

    Returns
    -------
    Version or None
        The new version; ``None`` if this worker no longer owns the round
        (it was requeued as stale), in which case nothing is written.
    """
    now = now or utcnow()
    try:
        res = session.execute(
            update(Round).where(*_owned(round_id, worker_id, attempt))
            .values(state=RoundState.DONE.value, finished_at=now, heartbeat_at=now,
                    decision=decision.value, reason=reason, metrics=metrics, stats=stats)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            return None
        rnd = session.get(Round, round_id, populate_existing=True)
        assert rnd is not None
        number = _bump(session, tenant_id=rnd.tenant_id, model_id=rnd.model_id,
                       column="version_seq")
        assert number is not None
        version = Version(tenant_id=rnd.tenant_id, model_id=rnd.model_id, number=number,
                          parent_id=rnd.base_version_id, round_id=rnd.id,
                          policy_id=rnd.policy_id, decision=decision.value, reason=reason,
                          metrics=metrics, sha256=sha256, nbytes=nbytes, created_at=now)
        session.add(version)
        session.flush()
        if decision is Decision.PROMOTE:
            moved = session.execute(
                update(Model)
                .where(Model.tenant_id == rnd.tenant_id, Model.id == rnd.model_id,
                       Model.current_version_id == rnd.base_version_id)
                .values(current_version_id=version.id)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                version.decision = rnd.decision = Decision.KEEP.value
                version.reason = rnd.reason = (
                    "kept: the current version changed while the round ran"
                )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return version


def fail_round(session: Session, *, round_id: str, worker_id: str, attempt: int, error: str,
               now: datetime | None = None) -> bool:
    """Mark a running round failed; its data stays with it (the owner may retry it)."""
    now = now or utcnow()
    res = session.execute(
        update(Round).where(*_owned(round_id, worker_id, attempt))
        .values(state=RoundState.FAILED.value, finished_at=now, error=error)
    )
    session.commit()
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def retry_later(session: Session, *, round_id: str, worker_id: str, attempt: int, error: str,
                not_before: datetime) -> bool:
    """Put a running round back to pending until ``not_before`` (a transient failure)."""
    res = session.execute(
        update(Round).where(*_owned(round_id, worker_id, attempt))
        .values(state=RoundState.PENDING.value, worker_id=None, heartbeat_at=None,
                error=error, not_before=not_before)
    )
    session.commit()
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def requeue_running(session: Session, *, worker_id: str | None = None,
                    stale_before: datetime | None = None, now: datetime | None = None) -> int:
    """Send rounds left running by a dead worker back to pending; returns how many.

    Parameters
    ----------
    worker_id : str, optional
        Requeue every running round of this worker (it restarted, so they are dead).
    stale_before : datetime, optional
        Requeue running rounds of any worker whose heartbeat is older.
    """
    now = now or utcnow()
    conds = []
    if worker_id is not None:
        conds.append(Round.worker_id == worker_id)
    if stale_before is not None:
        conds.append(Round.heartbeat_at < stale_before)
    if not conds:
        return 0
    res = session.execute(
        update(Round).where(Round.state == RoundState.RUNNING.value, or_(*conds))
        .values(state=RoundState.PENDING.value, worker_id=None, heartbeat_at=None,
                not_before=now, error="redone: the worker running it stopped")
    )
    session.commit()
    return int(res.rowcount)  # type: ignore[attr-defined]


def retry_round(session: Session, *, tenant_id: str, model_id: str, round_id: str,
                now: datetime | None = None) -> Round | None:
    """The owner asks for a failed round to run again, with the same data.

    Raises
    ------
    Conflict
        The round is not failed, or another round of the model is active.
    """
    now = now or utcnow()
    rnd = get_round(session, tenant_id=tenant_id, model_id=model_id, round_id=round_id)
    if rnd is None:
        return None
    if rnd.state != RoundState.FAILED.value:
        raise Conflict(f"only a failed round can be retried; this one is {rnd.state}")
    if _active_round(session, tenant_id=tenant_id, model_id=model_id) is not None:
        raise Conflict("a round of this model is already pending or running")
    rnd.state = RoundState.PENDING.value
    rnd.not_before = now
    rnd.attempts = 0
    rnd.finished_at = None
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("a round of this model is already pending or running") from None
    return rnd


def expire_stale(session: Session, *, lease: timedelta, now: datetime | None = None) -> int:
    """Requeue running rounds whose heartbeat is older than ``lease``."""
    now = now or utcnow()
    return requeue_running(session, stale_before=now - lease, now=now)
