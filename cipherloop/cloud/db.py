"""Metadata tables and the engine factory.

Runs in: host. Metadata only: ciphertexts live in the blob store and rows
name them by SHA-256. Every table below ``tenants`` carries ``tenant_id``,
and every reference to another tenant-owned row is a composite foreign key
``(tenant_id, id)``, so the database itself refuses a row that points into
another tenant's data -- the query filters in :mod:`.crud` are the first
guard, this is the second.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``,
so a committed row survives a power cut, and with foreign keys on. The same
models run on PostgreSQL through psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

ID_LEN = 32
SHA_LEN = 64


def new_id() -> str:
    """A random, unguessable row id (128 bits, hex)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Role(enum.StrEnum):
    """What a token may do: everything (owner), upload data, or run inference."""

    OWNER = "owner"
    CONTRIBUTOR = "contributor"
    PREDICT = "predict"


class UploadKind(enum.StrEnum):
    DATA = "data"
    HOLDOUT = "holdout"


class RoundState(enum.StrEnum):
    """pending -> running -> done | failed; a crashed running round goes back to pending."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Decision(enum.StrEnum):
    """Why a version exists: uploaded by the owner, or a round's candidate (promoted or kept)."""

    UPLOADED = "uploaded"
    PROMOTE = "promote"
    KEEP = "keep"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


def _tenant_fk(column: str, target: str, *, name: str, ondelete: str | None = None,
               use_alter: bool = False) -> ForeignKeyConstraint:
    """``(tenant_id, column) -> target(tenant_id, id)``: a reference can't cross tenants."""
    return ForeignKeyConstraint(["tenant_id", column], [f"{target}.tenant_id", f"{target}.id"],
                                name=name, ondelete=ondelete, use_alter=use_alter)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """A bearer token, stored only as its SHA-256."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(SHA_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Context(Base):
    """A tenant's public CKKS context (public, relinearisation and Galois keys)."""

    __tablename__ = "contexts"
    __table_args__ = (UniqueConstraint("tenant_id", "id", name="uq_contexts_tenant_id"),)

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    # Globally unique: a key belongs to one tenant, so no tenant can point the
    # enclave at another tenant's key by registering its (public) context.
    key_id: Mapped[str] = mapped_column(String(SHA_LEN), unique=True)
    params_digest: Mapped[str] = mapped_column(String(SHA_LEN))
    poly_modulus_degree: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id", name="uq_models_tenant_id"),
        _tenant_fk("context_id", "contexts", name="fk_models_context"),
        _tenant_fk("current_version_id", "versions", name="fk_models_current", use_alter=True),
    )

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    context_id: Mapped[str] = mapped_column(String(ID_LEN))
    name: Mapped[str] = mapped_column(String(200))
    n_features: Mapped[int] = mapped_column(Integer)
    current_version_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    # Counters bumped with UPDATE ... RETURNING: the bump takes the row's write
    # lock first, which serialises number allocation on SQLite and PostgreSQL alike.
    version_seq: Mapped[int] = mapped_column(Integer, default=0)
    round_seq: Mapped[int] = mapped_column(Integer, default=0)
    policy_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Policy(Base):
    """One immutable revision of a model's refinement policy; the highest number is in force."""

    __tablename__ = "policies"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id", name="uq_policies_tenant_id"),
        UniqueConstraint("model_id", "number", name="uq_policies_number"),
        _tenant_fk("model_id", "models", name="fk_policies_model", ondelete="CASCADE"),
    )

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    model_id: Mapped[str] = mapped_column(String(ID_LEN))
    number: Mapped[int] = mapped_column(Integer)
    trigger_min_samples: Mapped[int | None] = mapped_column(Integer, default=None)
    trigger_interval_s: Mapped[float | None] = mapped_column(Float, default=None)
    epochs: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer, default=None)
    learning_rate: Mapped[float] = mapped_column(Float)
    lr_schedule: Mapped[str] = mapped_column(String(16))
    lr_decay: Mapped[float] = mapped_column(Float)
    momentum: Mapped[float] = mapped_column(Float)
    metric: Mapped[str] = mapped_column(String(16))
    release_metric: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Version(Base):
    """One encrypted model version and its lineage. Written once, in one transaction."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id", name="uq_versions_tenant_id"),
        UniqueConstraint("model_id", "number", name="uq_versions_number"),
        # One candidate per round: a round redone after a crash can't add a second.
        UniqueConstraint("round_id", name="uq_versions_round"),
        _tenant_fk("model_id", "models", name="fk_versions_model", ondelete="CASCADE"),
        _tenant_fk("parent_id", "versions", name="fk_versions_parent"),
        _tenant_fk("round_id", "rounds", name="fk_versions_round"),
        _tenant_fk("policy_id", "policies", name="fk_versions_policy"),
    )

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    model_id: Mapped[str] = mapped_column(String(ID_LEN))
    number: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    round_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    policy_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Round(Base):
    """A refinement round: a row with a state machine, so a crash loses nothing."""

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id", name="uq_rounds_tenant_id"),
        UniqueConstraint("model_id", "number", name="uq_rounds_number"),
        _tenant_fk("model_id", "models", name="fk_rounds_model", ondelete="CASCADE"),
        _tenant_fk("policy_id", "policies", name="fk_rounds_policy"),
        _tenant_fk("base_version_id", "versions", name="fk_rounds_base"),
        _tenant_fk("holdout_id", "uploads", name="fk_rounds_holdout", use_alter=True),
        # At most one pending or running round per model, enforced by the database.
        Index("uq_rounds_active", "model_id", unique=True,
              sqlite_where=text("state IN ('pending', 'running')"),
              postgresql_where=text("state IN ('pending', 'running')")),
        Index("ix_rounds_state", "state", "not_before"),
    )

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    model_id: Mapped[str] = mapped_column(String(ID_LEN))
    number: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=RoundState.PENDING.value)
    policy_id: Mapped[str] = mapped_column(String(ID_LEN))
    holdout_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    base_version_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    spec: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    worker_id: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    decision: Mapped[str | None] = mapped_column(String(16), default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    stats: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Upload(Base):
    """Encrypted samples (features + labels) for one model; data or hold-out."""

    __tablename__ = "uploads"
    __table_args__ = (
        UniqueConstraint("tenant_id", "id", name="uq_uploads_tenant_id"),
        # Idempotency: the same bytes for the same model are the same upload.
        UniqueConstraint("tenant_id", "model_id", "sha256", name="uq_uploads_content"),
        _tenant_fk("model_id", "models", name="fk_uploads_model", ondelete="CASCADE"),
        _tenant_fk("round_id", "rounds", name="fk_uploads_round"),
        Index("ix_uploads_unconsumed", "model_id", "kind", "round_id"),
    )

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    model_id: Mapped[str] = mapped_column(String(ID_LEN))
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    n_samples: Mapped[int] = mapped_column(Integer)
    token_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    # The round that consumed this data upload (NULL: new data). Set once.
    round_id: Mapped[str | None] = mapped_column(String(ID_LEN), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Preprocessing(Base):
    """What the owner fixed at ``init`` that turns raw features into the model's inputs.

    Standardisation (``(x - mean) / scale`` per feature) fitted on the
    owner's data; contributors and predict clients apply it before they
    encrypt. Plaintext by design: the README says what it reveals to whom.
    """

    __tablename__ = "preprocessing"
    __table_args__ = (
        _tenant_fk("model_id", "models", name="fk_preprocessing_model", ondelete="CASCADE"),
    )

    model_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    mean: Mapped[list[float]] = mapped_column(JSON)
    scale: Mapped[list[float]] = mapped_column(JSON)


def _sqlite_pragmas(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
    finally:
        cur.close()


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``, with SQLite's durability pragmas, tables created.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://...``.
    create : bool
        Create missing tables (idempotent).

    Returns
    -------
    Engine

    Examples
    --------
    >>> engine = make_engine("sqlite://")
    >>> engine.dialect.name
    'sqlite'
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if create:
        Base.metadata.create_all(engine)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    """Sessions that keep loaded attributes after commit (responses are built after it)."""
    return sessionmaker(engine, expire_on_commit=False)
