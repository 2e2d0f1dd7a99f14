"""The metadata store (crud + db) on SQLite, and on PostgreSQL when configured.

Every test here runs twice through the ``db_url`` fixture; the PostgreSQL
run needs CIPHERLOOP_TEST_POSTGRES_URL (skipped locally without it, a failure under CI=true;
``scripts/ci-postgres.sh`` starts a server and prints one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cipherloop.cloud import crud
from cipherloop.cloud.db import (
    Decision,
    Model,
    Role,
    Round,
    RoundState,
    Upload,
    UploadKind,
    make_engine,
    make_sessionmaker,
)
from cipherloop.cloud.policy import RefinePolicy

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def _sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _model(s: Session, *, policy: RefinePolicy | None = None,
           with_version: bool = True) -> tuple[str, str]:
    tenant, _ = crud.create_tenant(s, name="t")
    ctx, _ = crud.add_context(s, tenant_id=tenant.id, key_id=_sha(f"key-{tenant.id}")[:32],
                              params_digest=_sha("p"), poly_modulus_degree=8192,
                              sha256=_sha("ctx"), nbytes=1)
    model = crud.create_model(s, tenant_id=tenant.id, context_id=ctx.id, name="m",
                              n_features=4, policy=policy or RefinePolicy())
    if with_version:
        crud.add_version(s, tenant_id=tenant.id, model_id=model.id, sha256=_sha("v1"), nbytes=1)
    return tenant.id, model.id


def _upload(s: Session, tenant_id: str, model_id: str, i: int, *, n: int = 10,
            kind: UploadKind = UploadKind.DATA) -> Upload:
    row, _ = crud.add_upload(s, tenant_id=tenant_id, model_id=model_id, kind=kind,
                             sha256=_sha(i), nbytes=1, n_samples=n, token_id=None)
    return row


def test_sqlite_runs_in_wal_with_full_sync_and_foreign_keys(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_tokens_are_stored_only_as_hashes(sessions: sessionmaker[Session], engine: Engine) -> None:
    with sessions() as s:
        tenant, secret = crud.create_tenant(s, name="t")
        assert crud.authenticate(s, token=secret) is not None
    with engine.connect() as c:
        rows = c.execute(text("SELECT token_hash FROM tokens")).all()
    assert [r[0] for r in rows] == [hashlib.sha256(secret.encode()).hexdigest()]


def test_revoked_and_wrong_tokens_do_not_authenticate(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        tenant, _ = crud.create_tenant(s, name="t")
        row, secret = crud.issue_token(s, tenant_id=tenant.id, role=Role.CONTRIBUTOR, label="")
        assert crud.authenticate(s, token=secret + "x") is None
        crud.revoke_token(s, tenant_id=tenant.id, token_id=row.id)
        assert crud.authenticate(s, token=secret) is None


def test_a_key_belongs_to_one_tenant(sessions: sessionmaker[Session]) -> None:
    kw: dict[str, Any] = {"key_id": "k" * 32, "params_digest": _sha("p"), "poly_modulus_degree": 8192,
          "sha256": _sha("c"), "nbytes": 1}
    with sessions() as s:
        a, _ = crud.create_tenant(s, name="a")
        b, _ = crud.create_tenant(s, name="b")
        first, created = crud.add_context(s, tenant_id=a.id, **kw)
        again, created_again = crud.add_context(s, tenant_id=a.id, **kw)
        assert created and not created_again and again.id == first.id
        with pytest.raises(crud.Conflict):
            crud.add_context(s, tenant_id=b.id, **kw)


def test_cross_tenant_reference_is_refused_by_the_database(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        _, model_a = _model(s)
        tenant_b, _ = _model(s)
        s.add(Upload(tenant_id=tenant_b, model_id=model_a, kind="data", sha256=_sha("x"),
                     nbytes=1, n_samples=1))
        with pytest.raises(IntegrityError):
            s.commit()


def test_upload_is_idempotent_by_content_hash(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s)
        first, created = crud.add_upload(s, tenant_id=t, model_id=m, kind=UploadKind.DATA,
                                         sha256=_sha(1), nbytes=1, n_samples=5, token_id=None)
        again, created_again = crud.add_upload(s, tenant_id=t, model_id=m,
                                               kind=UploadKind.DATA, sha256=_sha(1), nbytes=1,
                                               n_samples=5, token_id=None)
        assert (created, created_again, again.id) == (True, False, first.id)
        with pytest.raises(crud.Conflict, match="already uploaded as data"):
            crud.add_upload(s, tenant_id=t, model_id=m, kind=UploadKind.HOLDOUT,
                            sha256=_sha(1), nbytes=1, n_samples=5, token_id=None)
        assert len(crud.list_uploads(s, tenant_id=t, model_id=m)) == 1


def test_timestamps_come_back_timezone_aware(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s)
    with sessions() as s:
        model = crud.get_model(s, tenant_id=t, model_id=m)
        assert model is not None and model.created_at.tzinfo is not None


def test_round_takes_all_new_data_and_holdout(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s)
        ups = [_upload(s, t, m, i) for i in range(3)]
        hold = _upload(s, t, m, 99, kind=UploadKind.HOLDOUT)
        rnd = crud.create_round(s, tenant_id=t, model_id=m, trigger="manual", now=T0)
        assert rnd is not None and rnd.state == RoundState.PENDING
        assert [u.id for u in crud.round_data(s, tenant_id=t, round_id=rnd.id)] == [
            u.id for u in ups]
        assert rnd.holdout_id == hold.id
        assert crud.new_data(s, tenant_id=t, model_id=m) == []


def test_one_active_round_per_model(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s)
        _upload(s, t, m, 1)
        crud.create_round(s, tenant_id=t, model_id=m, trigger="manual")
        _upload(s, t, m, 2)
        with pytest.raises(crud.Conflict, match="already pending or running"):
            crud.create_round(s, tenant_id=t, model_id=m, trigger="manual")
        # The database enforces it too (partial unique index), whatever the caller checks.
        s.add(Round(tenant_id=t, model_id=m, number=99, trigger="manual", state="pending",
                    policy_id=crud.current_policy(s, tenant_id=t, model_id=m).id))  # type: ignore[union-attr]
        with pytest.raises(IntegrityError):
            s.commit()


def test_round_needs_new_data_and_a_version(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s)
        with pytest.raises(crud.Conflict, match="no new data"):
            crud.create_round(s, tenant_id=t, model_id=m, trigger="manual")
        t2, m2 = _model(s, with_version=False)
        _upload(s, t2, m2, 1)
        with pytest.raises(crud.Conflict, match="no version"):
            crud.create_round(s, tenant_id=t2, model_id=m2, trigger="manual")


def test_schedule_follows_the_sample_trigger(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s, policy=RefinePolicy(trigger_min_samples=25))
        _upload(s, t, m, 1, n=10)
        _upload(s, t, m, 2, n=10)
        assert crud.schedule_rounds(s, now=T0) == []
        _upload(s, t, m, 3, n=10)
        (rnd,) = crud.schedule_rounds(s, now=T0)
        assert rnd.trigger == "samples"
        assert crud.schedule_rounds(s, now=T0) == []  # one active round at a time


def test_schedule_follows_the_interval_trigger(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s, policy=RefinePolicy(trigger_interval_s=60))
        created = crud.get_model(s, tenant_id=t, model_id=m).created_at  # type: ignore[union-attr]
        _upload(s, t, m, 1)
        assert crud.schedule_rounds(s, now=created + timedelta(seconds=30)) == []
        (rnd,) = crud.schedule_rounds(s, now=created + timedelta(seconds=61))
        assert rnd.trigger == "interval"


def test_claim_runs_a_round_once_with_spec_and_base(sessions: sessionmaker[Session]) -> None:
    policy = RefinePolicy(learning_rate=0.8, lr_schedule="decay", lr_decay=0.5, epochs=3)
    with sessions() as s:
        t, m = _model(s, policy=policy)
        _upload(s, t, m, 1)
        crud.create_round(s, tenant_id=t, model_id=m, trigger="manual", now=T0)
        rnd = crud.claim_round(s, worker_id="w1", now=T0)
        assert rnd is not None
        assert crud.claim_round(s, worker_id="w2", now=T0) is None
        model = crud.get_model(s, tenant_id=t, model_id=m)
        assert model is not None
        assert (rnd.state, rnd.attempts, rnd.worker_id) == ("running", 1, "w1")
        assert rnd.base_version_id == model.current_version_id
        assert rnd.spec is not None
        assert rnd.spec["learning_rate"] == 0.8 and rnd.spec["epochs"] == 3


def _claimed(s: Session, **policy: object) -> tuple[str, str, Round]:
    t, m = _model(s, policy=RefinePolicy(**policy))  # type: ignore[arg-type]
    _upload(s, t, m, 1)
    crud.create_round(s, tenant_id=t, model_id=m, trigger="manual", now=T0)
    rnd = crud.claim_round(s, worker_id="w", now=T0)
    assert rnd is not None
    return t, m, rnd


def test_finish_writes_version_and_promotes_in_one_step(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m, rnd = _claimed(s)
        v = crud.finish_round(s, round_id=rnd.id, worker_id="w", attempt=1, sha256=_sha("c"),
                              nbytes=1, decision=Decision.PROMOTE, reason="r",
                              metrics={"candidate": 0.1}, stats=None, now=T0)
        assert v is not None
        model = crud.get_model(s, tenant_id=t, model_id=m)
        assert model is not None and model.current_version_id == v.id
        assert v.parent_id == rnd.base_version_id and v.round_id == rnd.id
        done = crud.get_round(s, tenant_id=t, model_id=m, round_id=rnd.id)
        assert done is not None and done.state == "done" and done.decision == "promote"


def test_finish_by_a_worker_that_lost_the_round_writes_nothing(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m, rnd = _claimed(s)
        assert crud.requeue_running(s, worker_id="w") == 1
        v = crud.finish_round(s, round_id=rnd.id, worker_id="w", attempt=1, sha256=_sha("c"),
                              nbytes=1, decision=Decision.PROMOTE, reason="", metrics=None,
                              stats=None)
        assert v is None
        assert len(crud.list_versions(s, tenant_id=t, model_id=m)) == 1


def test_promotion_yields_to_a_rollback_made_during_the_round(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m, rnd = _claimed(s)
        older = crud.list_versions(s, tenant_id=t, model_id=m)[0]
        newer = crud.add_version(s, tenant_id=t, model_id=m, sha256=_sha("v2"), nbytes=1)
        assert newer is not None
        v = crud.finish_round(s, round_id=rnd.id, worker_id="w", attempt=1, sha256=_sha("c"),
                              nbytes=1, decision=Decision.PROMOTE, reason="", metrics=None,
                              stats=None)
        assert v is not None and v.decision == "keep" and "changed" in v.reason
        model = crud.get_model(s, tenant_id=t, model_id=m)
        assert model is not None and model.current_version_id == newer.id != older.id


def test_requeue_stale_rounds_by_heartbeat(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        _, _, rnd = _claimed(s)
        assert crud.expire_stale(s, lease=timedelta(seconds=60), now=T0 + timedelta(seconds=30)) == 0
        assert crud.heartbeat(s, round_id=rnd.id, worker_id="w", attempt=1,
                              now=T0 + timedelta(seconds=50))
        assert crud.expire_stale(s, lease=timedelta(seconds=60), now=T0 + timedelta(seconds=100)) == 0
        assert crud.expire_stale(s, lease=timedelta(seconds=60), now=T0 + timedelta(seconds=111)) == 1
        again = crud.claim_round(s, worker_id="w2", now=T0 + timedelta(seconds=112))
        assert again is not None and again.id == rnd.id and again.attempts == 2


def test_retry_later_and_fail_and_owner_retry(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m, rnd = _claimed(s)
        later = T0 + timedelta(seconds=30)
        assert crud.retry_later(s, round_id=rnd.id, worker_id="w", attempt=1, error="e",
                                not_before=later)
        assert crud.claim_round(s, worker_id="w", now=T0) is None
        rnd = crud.claim_round(s, worker_id="w", now=later)  # type: ignore[assignment]
        assert rnd is not None and rnd.attempts == 2
        assert crud.fail_round(s, round_id=rnd.id, worker_id="w", attempt=2, error="bad")
        again = crud.retry_round(s, tenant_id=t, model_id=m, round_id=rnd.id)
        assert again is not None and again.state == "pending" and again.attempts == 0
        with pytest.raises(crud.Conflict, match="only a failed round"):
            crud.retry_round(s, tenant_id=t, model_id=m, round_id=rnd.id)


def test_model_counters_serialise_version_numbers(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        t, m = _model(s)
        for i in range(3):
            crud.add_version(s, tenant_id=t, model_id=m, sha256=_sha(f"v{i}"), nbytes=1)
        assert [v.number for v in crud.list_versions(s, tenant_id=t, model_id=m)] == [1, 2, 3, 4]
        row = s.get(Model, m)
        assert row is not None and row.version_seq == 4
