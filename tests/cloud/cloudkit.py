"""Helpers of the cloud service tests (importable; fixtures live in conftest.py).

:class:`FakeRefiner` is a FAKE: model checks and inference are the real
:class:`~cipherloop.cloud.refiner.LearnRefiner`, only ``refine_round`` is
scripted (no enclave). Tests using the real refiner and enclave are in
``test_e2e.py`` and say so.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import httpx
import numpy as np
from fastapi.testclient import TestClient

from cipherloop.ckks import (
    CiphertextBatch,
    PublicContext,
    SecretContext,
    preset,
)
from cipherloop.client.data import encrypt_dataset, encrypt_model
from cipherloop.cloud.db import Decision
from cipherloop.cloud.refiner import LearnRefiner, RoundResult, RoundSpec, SampleSet
from cipherloop.cloud.settings import Settings
from cipherloop.learn.wire import encode_samples

ADMIN = "admin-token-for-tests-0123456789"
N_FEATURES = 4
PG_ENV = "CIPHERLOOP_TEST_POSTGRES_URL"


# ------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class Keys:
    """One owner's key pair and the public context bytes it registers."""

    secret: SecretContext
    public: PublicContext
    public_bytes: bytes

    def samples(self, n: int, *, d: int = N_FEATURES, seed: int = 0) -> bytes:
        """An upload body of ``n`` encrypted samples."""
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, d))
        y = (X @ np.arange(1, d + 1) > 0).astype(np.float64)
        f, lab = encrypt_dataset(self.public, X, y).to_batches(self.public)
        return encode_samples(f, lab)

    def batches(self, n: int, *, d: int = N_FEATURES,
                seed: int = 0) -> tuple[CiphertextBatch, CiphertextBatch]:
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(n, d))
        y = (X[:, 0] > 0).astype(np.float64)
        return encrypt_dataset(self.public, X, y).to_batches(self.public)

    def model(self, *, d: int = N_FEATURES, seed: int = 0) -> bytes:
        """An encrypted model (with intercept), as the owner uploads it."""
        w = np.random.default_rng(seed).normal(size=d)
        return encrypt_model(self.public, w, 0.1).to_bytes(self.public)


def make_keys(*, rotations: Sequence[int] = (1,)) -> Keys:
    """A key pair for these tests.

    Inference at 4 features (one baby-step block, no giant steps) rotates only
    by 1, and the fake refiner never rotates, so one Galois key is enough and
    the public context stays a few MB instead of ~35 (``rotations_for_features``
    gives the full set that real refinement needs; ``test_e2e.py`` uses it).
    """
    secret = SecretContext.generate(preset("n8192"), rotations)
    public = secret.public_context()
    return Keys(secret, public, public.serialize())


# ------------------------------------------------------------------ fake refiner
class Crash(BaseException):
    """Stands in for ``kill -9`` mid-round: not an Exception, so nothing handles it."""


@dataclass
class FakeRefiner(LearnRefiner):
    """FAKE refiner: real model checks and inference, scripted rounds (no enclave).

    The candidate is the current model with its coefficients doubled (a real,
    different ciphertext), so versions differ and stay usable for inference.
    """

    decision: Decision = Decision.PROMOTE
    error: BaseException | None = None
    metrics: dict[str, Any] | None = field(
        default_factory=lambda: {"metric": "log_loss", "candidate": 0.5, "current": 0.6})
    calls: list[dict[str, Any]] = field(default_factory=list)
    before: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        super().__init__(None)

    def refine_round(self, context: PublicContext, model: bytes, data: Sequence[SampleSet],
                     holdout: SampleSet | None, spec: RoundSpec) -> RoundResult:
        self.calls.append({"n_data": len(data), "holdout": holdout is not None, "spec": spec})
        if self.before is not None:
            self.before()
        if self.error is not None:
            raise self.error
        current = self._model(context, model)
        candidate = current.with_parts(coef=current.coef + current.coef)
        return RoundResult(candidate.to_bytes(context), self.decision, "fake verdict",
                           self.metrics, {"n_data": len(data)})


def wait_for(what: Callable[[], Any], *, timeout: float, step: float = 0.05) -> Any:
    """Poll ``what`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def b64(data: bytes) -> str:
    """Standard base64, as the relay endpoints take bytes in JSON."""
    return base64.b64encode(data).decode()


class RelayLink:
    """The owner's side of the provisioning relay over HTTP (any httpx client, TestClient too).

    Has the ``attest``/``provision`` pair that
    :func:`cipherloop.client.provisioning.provision` talks to.
    """

    def __init__(self, client: httpx.Client, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    def attest(self, nonce: bytes, session_id: bytes) -> dict[str, Any]:
        r = self.client.post("/v1/enclave/attest", headers=self.headers,
                             json={"nonce": b64(nonce), "session_id": b64(session_id)})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/cbor"
        offer: dict[str, Any] = cbor2.loads(r.content)
        return offer

    def provision(self, session_id: bytes, envelope: bytes) -> str:
        r = self.client.post("/v1/enclave/provision", headers=self.headers,
                             json={"session_id": b64(session_id), "envelope": b64(envelope)})
        assert r.status_code == 200, r.text
        return str(r.json()["key_id"])


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    """A tenant set up through the API: context, model and first version."""

    id: str
    owner: dict[str, str]
    context_id: str
    model_id: str
    version_id: str
    keys: Keys

    def token(self, client: TestClient, role: str) -> dict[str, str]:
        r = client.post("/v1/tokens", json={"role": role, "label": role}, headers=self.owner)
        assert r.status_code == 201, r.text
        return bearer(r.json()["token"])


def make_tenant(client: TestClient, keys: Keys, *, name: str = "acme",
                policy: dict[str, Any] | None = None) -> Tenant:
    r = client.post("/v1/admin/tenants", json={"name": name}, headers=admin_headers())
    assert r.status_code == 201, r.text
    owner = bearer(r.json()["owner_token"])
    r = client.post("/v1/contexts", content=keys.public_bytes, headers=owner)
    assert r.status_code in (200, 201), r.text
    context_id = r.json()["id"]
    r = client.post("/v1/models", json={"name": "m", "context_id": context_id,
                                        "n_features": N_FEATURES, "policy": policy or {}},
                    headers=owner)
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    r = client.post(f"/v1/models/{model_id}/versions", content=keys.model(), headers=owner)
    assert r.status_code == 201, r.text
    return Tenant(_tenant_id(client, owner), owner, context_id, model_id, r.json()["id"], keys)


def _tenant_id(client: TestClient, owner: dict[str, str]) -> str:
    return str(client.get("/v1/whoami", headers=owner).json()["tenant_id"])


def blob_files(settings: Settings) -> list[Path]:
    """Every stored blob (temporary files excluded)."""
    root = settings.blob_dir
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


# ------------------------------------------------------------------- route table
@dataclass(frozen=True)
class Route:
    """One endpoint: who may call it, what body it takes, how it is tenant-scoped.

    ``scope``: ``id`` (names tenant-owned ids in its path), ``list`` (lists the
    caller's tenant), ``create`` (creates in the caller's tenant), ``key``
    (answers only for a key the caller's tenant registered: relayed
    provisioning, tested in ``test_relay.py``), ``none`` (not tenant data:
    health, admin, whoami, the enclave's identity and challenge).
    """

    method: str
    path: str
    roles: frozenset[str]
    scope: str
    body: str | None = None

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _r(method: str, path: str, roles: str, scope: str, body: str | None = None) -> Route:
    return Route(method, path, frozenset(roles.split()), scope, body)


ROUTES: tuple[Route, ...] = (
    _r("GET", "/healthz", "public", "none"),
    _r("POST", "/v1/admin/tenants", "admin", "none", "tenant"),
    _r("GET", "/v1/admin/tenants", "admin", "none"),
    _r("POST", "/v1/admin/tenants/{tenant_id}/owner-tokens", "admin", "none"),
    _r("GET", "/v1/whoami", "owner contributor predict", "none"),
    _r("POST", "/v1/tokens", "owner", "create", "token"),
    _r("GET", "/v1/tokens", "owner", "list"),
    _r("DELETE", "/v1/tokens/{token_id}", "owner", "id"),
    _r("POST", "/v1/contexts", "owner", "create", "context"),
    _r("GET", "/v1/contexts", "owner contributor predict", "list"),
    _r("GET", "/v1/contexts/{context_id}", "owner contributor predict", "id"),
    _r("GET", "/v1/contexts/{context_id}/blob", "owner contributor predict", "id"),
    _r("POST", "/v1/models", "owner", "create", "model_create"),
    _r("GET", "/v1/models", "owner", "list"),
    _r("GET", "/v1/models/{model_id}", "owner", "id"),
    _r("DELETE", "/v1/models/{model_id}", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/policy", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/preprocessing", "owner contributor predict", "id"),
    _r("PUT", "/v1/models/{model_id}/policy", "owner", "id", "policy"),
    _r("POST", "/v1/models/{model_id}/versions", "owner", "id", "model"),
    _r("GET", "/v1/models/{model_id}/versions", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/versions/{version_id}", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/versions/{version_id}/blob", "owner", "id"),
    _r("PUT", "/v1/models/{model_id}/current", "owner", "id", "current"),
    _r("POST", "/v1/models/{model_id}/uploads", "owner contributor", "id", "samples"),
    _r("GET", "/v1/models/{model_id}/uploads", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/uploads/{upload_id}", "owner", "id"),
    _r("POST", "/v1/models/{model_id}/rounds", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/rounds", "owner", "id"),
    _r("GET", "/v1/models/{model_id}/rounds/{round_id}", "owner", "id"),
    _r("POST", "/v1/models/{model_id}/rounds/{round_id}/retry", "owner", "id"),
    _r("POST", "/v1/models/{model_id}/predict", "owner predict", "id", "features"),
    _r("GET", "/v1/enclave", "owner", "none"),
    _r("POST", "/v1/enclave/attest", "owner", "none", "challenge"),
    _r("POST", "/v1/enclave/provision", "owner", "key", "envelope"),
)


@dataclass
class World:
    """One tenant with one of everything: the ids the route table's paths name."""

    keys: Keys
    ids: dict[str, str]
    headers: dict[str, dict[str, str]]

    def path(self, route: Route, **override: str) -> str:
        ids = dict(self.ids)
        if route.id == "DELETE /v1/models/{model_id}":  # deletes: aim at the spare model
            ids["model_id"] = ids["spare_model_id"]
        return route.path.format(**{**ids, **override})

    def body(self, route: Route, *, version_id: str | None = None) -> dict[str, Any]:
        """Request keyword arguments for a valid body of ``route`` made by this tenant."""
        kind = route.body
        if kind is None:
            return {}
        if kind in ("samples", "model", "context", "features"):
            data = {"samples": lambda: self.keys.samples(20, seed=7),
                    "model": lambda: self.keys.model(seed=7),
                    "context": lambda: self.keys.public_bytes,
                    "features": lambda: self.keys.batches(8)[0].to_bytes()}[kind]()
            return {"content": data}
        doc = {"tenant": {"name": "x"}, "token": {"role": "contributor"},
               "model_create": {"name": "m2", "context_id": self.ids["context_id"],
                                "n_features": N_FEATURES},
               "policy": {"epochs": 2},
               "challenge": {"nonce": b64(bytes(32)), "session_id": b64(bytes(16))},
               "envelope": {"session_id": b64(bytes(16)), "envelope": b64(b"not an envelope")},
               "current": {"version_id": version_id or self.ids["version_id"]}}[kind]
        return {"json": doc}


def build_world(client: TestClient, keys: Keys, *, name: str) -> World:
    """A tenant with context, model, two versions, data and hold-out uploads, a done round."""
    from cipherloop.cloud.worker import Worker

    t = make_tenant(client, keys, name=name)
    headers = {"owner": t.owner}
    for role in ("contributor", "predict"):
        r = client.post("/v1/tokens", json={"role": role}, headers=t.owner)
        headers[role] = bearer(r.json()["token"])
    spare = client.post("/v1/tokens", json={"role": "predict", "label": "spare"}, headers=t.owner)
    spare_model = client.post("/v1/models", headers=t.owner, json={
        "name": "spare", "context_id": t.context_id, "n_features": N_FEATURES}).json()
    m = t.model_id
    up = client.post(f"/v1/models/{m}/uploads", content=keys.samples(20, seed=1),
                     headers=headers["contributor"]).json()
    hold = client.post(f"/v1/models/{m}/uploads?kind=holdout", content=keys.samples(20, seed=2),
                       headers=t.owner).json()
    rnd = client.post(f"/v1/models/{m}/rounds", headers=t.owner).json()
    services = client.app.state.services  # type: ignore[attr-defined]
    Worker(sessions=services.sessions, blobs=services.blobs, refiner=services.refiner,
           settings=services.settings).tick()
    rnd = client.get(f"/v1/models/{m}/rounds/{rnd['id']}", headers=t.owner).json()
    assert rnd["state"] == "done", rnd
    ids = {"tenant_id": t.id, "context_id": t.context_id, "model_id": m,
           "version_id": rnd["candidate_version_id"], "upload_id": up["id"],
           "holdout_id": hold["id"], "round_id": rnd["id"], "token_id": spare.json()["id"],
           "spare_model_id": spare_model["id"]}
    return World(keys, ids, headers)


def snapshot(client: TestClient, world: World) -> dict[str, Any]:
    """Everything the tenant's owner can see, to compare before and after."""
    h = world.headers["owner"]
    m = world.ids["model_id"]
    paths = ["/v1/tokens", "/v1/contexts", "/v1/models", f"/v1/models/{m}/versions",
             f"/v1/models/{m}/uploads", f"/v1/models/{m}/rounds", f"/v1/models/{m}/policy"]
    return {p: client.get(p, headers=h).json() for p in paths}
