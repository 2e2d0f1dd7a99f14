"""Request and response bodies of the HTTP API: one pydantic model per direction.

Runs in: host. ``*Create``/``*In`` models are what a client sends; ``*Public``
models are what it gets back. Response models name their fields explicitly,
so a token hash or any other column added later can't leak by accident.
Token secrets appear in exactly two responses (:class:`TenantCreated`,
:class:`TokenCreated`), once, at creation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from .policy import RefinePolicy

Name = Field(min_length=1, max_length=200)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Bounds that every stored number respects (and that fit a 32-bit integer column).
MAX_COUNT = 1_000_000_000
MAX_INTERVAL_S = 10 * 365 * 24 * 3600.0
_B64_32 = r"^[A-Za-z0-9+/]{43}=$"
_B64_16 = r"^[A-Za-z0-9+/]{22}==$"
_B64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"
MAX_ENVELOPE_B64 = 1 << 20


# -------------------------------------------------------------------------- errors
class ValidationItem(BaseModel):
    loc: list[str | int] = Field(description="where in the request: path, query or body field")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error answer: ``detail`` is one message, or the list of failed request checks.

    Route checks (a refused ciphertext, a missing id, a conflict) send a
    string; schema validation of the request sends the list (422 only).
    Neither ever echoes the submitted value.
    """

    detail: str | list[ValidationItem]


class Health(BaseModel):
    """``ok`` (HTTP 200) when every supervised process is up; ``degraded`` (HTTP 503) otherwise."""

    status: Literal["ok", "degraded"] = "ok"
    version: str
    children: dict[str, Literal["up", "down"]] = Field(
        default_factory=dict,
        description="the processes the service supervises (enclave, worker) and their state")


# --------------------------------------------------------------- tenants and tokens
class TenantCreate(_In):
    name: str = Name


class TenantPublic(_Out):
    id: str
    name: str
    created_at: datetime


class TenantCreated(TenantPublic):
    owner_token: str = Field(description="The owner's bearer token. Shown once; store it.")


class Whoami(BaseModel):
    tenant_id: str
    tenant_name: str
    token_id: str
    role: str


class TokenCreate(_In):
    role: Literal["contributor", "predict"] = Field(
        description="contributor: upload data only; predict: encrypted inference only"
    )
    label: str = Field(default="", max_length=200)


class TokenPublic(_Out):
    id: str
    role: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The bearer token. Shown once; store it.")


# ------------------------------------------------------------------------ contexts
class ContextPublic(_Out):
    id: str
    key_id: str
    params_digest: str
    poly_modulus_degree: int
    sha256: str
    nbytes: int
    created_at: datetime


# ------------------------------------------------------------------------- enclave
class EnclaveInfo(BaseModel):
    platform: str = Field(description="sim, sgx or nitro")
    measurement: str = Field(description="the enclave code's measurement, hex")
    simulated: bool = Field(description="true for the sim platform: NOT a TEE, protects nothing")


class AttestIn(_In):
    """The owner's challenge. Sizes and encoding are checked by the route (422), not echoed."""

    nonce: str = Field(description="base64 of 32 fresh random bytes", min_length=44,
                       max_length=44, pattern=_B64_32)
    session_id: str = Field(description="base64 of 16 random bytes", min_length=24,
                            max_length=24, pattern=_B64_16)


class ProvisionIn(_In):
    session_id: str = Field(description="base64 of the 16-byte session id the offer answered",
                            min_length=24, max_length=24, pattern=_B64_16)
    envelope: str = Field(description="base64 of the HPKE envelope sealed to the attested key",
                          min_length=4, max_length=MAX_ENVELOPE_B64, pattern=_B64)


class ProvisionedKey(BaseModel):
    key_id: str


# -------------------------------------------------------------------------- policy
class PolicyIn(_In):
    """The owner's refinement policy (see :class:`~cipherloop.cloud.policy.RefinePolicy`)."""

    trigger_min_samples: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    trigger_interval_s: float | None = Field(default=None, gt=0, le=MAX_INTERVAL_S)
    epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    learning_rate: float = Field(default=1.0, gt=0, lt=1000)
    lr_schedule: Literal["constant", "decay"] = "constant"
    lr_decay: float = Field(default=1.0, gt=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    metric: Literal["log_loss", "accuracy"] = "log_loss"
    release_metric: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> PolicyIn:
        self.to_policy()  # the domain type's own checks, reported as a 422
        return self

    def to_policy(self) -> RefinePolicy:
        return RefinePolicy(**self.model_dump())


class PolicyPublic(_Out):
    id: str
    number: int
    trigger_min_samples: int | None
    trigger_interval_s: float | None
    epochs: int
    batch_size: int | None
    learning_rate: float
    lr_schedule: str
    lr_decay: float
    momentum: float
    metric: str
    release_metric: bool
    created_at: datetime


# ------------------------------------------------------------------- preprocessing
MAX_ABS_MEAN = 1e12
MIN_SCALE, MAX_SCALE = 1e-12, 1e12


class PreprocessingIn(_In):
    """Standardisation the owner fitted on its own data: ``(x - mean) / scale`` per feature.

    Contributors and predict clients apply it before encrypting. Plaintext:
    the service and every token holder of the tenant can read the means and
    standard deviations.
    """

    kind: Literal["standardize"] = "standardize"
    mean: list[float] = Field(min_length=1, max_length=16384)
    scale: list[float] = Field(min_length=1, max_length=16384)

    @model_validator(mode="after")
    def _bounded(self) -> PreprocessingIn:
        if len(self.mean) != len(self.scale):
            raise ValueError("mean and scale must have one entry per feature")
        if not all(abs(m) <= MAX_ABS_MEAN for m in self.mean):
            raise ValueError(f"every mean must be within +-{MAX_ABS_MEAN:g}")
        if not all(MIN_SCALE <= v <= MAX_SCALE for v in self.scale):
            raise ValueError(f"every scale must be in [{MIN_SCALE:g}, {MAX_SCALE:g}]")
        return self


class PreprocessingPublic(_Out):
    """``kind`` ``none``: raw features go in as they are (``mean`` and ``scale`` empty)."""

    kind: Literal["none", "standardize"]
    mean: list[float]
    scale: list[float]


# -------------------------------------------------------------------------- models
class ModelCreate(_In):
    name: str = Name
    context_id: str = Field(min_length=1, max_length=64)
    n_features: int = Field(ge=1, le=16384, description=(
        "at most the context's slot count (4096 for n8192, 8192 for n16384); 422 otherwise"))
    policy: PolicyIn = Field(default_factory=PolicyIn)
    preprocessing: PreprocessingIn | None = Field(
        default=None, description="fixed for the model's life; one entry per feature")

    @model_validator(mode="after")
    def _one_entry_per_feature(self) -> ModelCreate:
        if self.preprocessing is not None and len(self.preprocessing.mean) != self.n_features:
            raise ValueError("preprocessing must have one mean and scale per feature")
        return self


class ModelPublic(_Out):
    id: str
    name: str
    context_id: str
    n_features: int
    current_version_id: str | None
    policy: PolicyPublic
    preprocessing: PreprocessingPublic
    created_at: datetime


class CurrentVersionSet(_In):
    version_id: str = Field(min_length=1, max_length=64)


class VersionPublic(_Out):
    """One model version and its lineage."""

    id: str
    model_id: str
    number: int
    parent_id: str | None
    round_id: str | None
    policy_id: str | None
    upload_ids: list[str] = Field(description="data uploads the round refined on")
    holdout_id: str | None = Field(description="hold-out upload the round was judged on")
    decision: str
    reason: str
    metrics: dict[str, Any] | None
    sha256: str
    nbytes: int
    created_at: datetime


# ------------------------------------------------------------------------- uploads
class UploadPublic(_Out):
    id: str
    model_id: str
    kind: str
    sha256: str
    nbytes: int
    n_samples: int
    round_id: str | None
    created_at: datetime


# -------------------------------------------------------------------------- rounds
class RoundPublic(_Out):
    id: str
    model_id: str
    number: int
    trigger: str
    state: str
    attempts: int
    policy_id: str
    base_version_id: str | None
    candidate_version_id: str | None
    upload_ids: list[str]
    holdout_id: str | None
    spec: dict[str, Any] | None
    decision: str | None
    reason: str
    metrics: dict[str, Any] | None
    stats: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
