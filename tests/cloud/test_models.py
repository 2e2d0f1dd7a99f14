"""Contexts, models, policy, versions, rollback and encrypted inference through the API.

Inference and model checks here are REAL (LearnRefiner on CKKS); only
rounds are faked, and none run in this file.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from cloudkit import N_FEATURES, Keys, admin_headers, bearer, make_tenant
from fastapi.testclient import TestClient

from cipherloop.ckks import CiphertextBatch, Diagonals, SampleBlocks
from cipherloop.ckks.layout import from_description
from cipherloop.client.data import decrypt_model, encrypt_model
from cipherloop.cloud.app import ERROR_STATUS, status_for
from cipherloop.errors import (
    EnclaveError,
    EnclaveUnavailable,
    InvalidCiphertext,
    ParameterMismatch,
    PolicyViolation,
    ShapeError,
)
from cipherloop.learn import EncryptedModel


def test_context_registration_is_idempotent_and_downloadable(client: TestClient,
                                                             keys: Keys) -> None:
    t = make_tenant(client, keys)
    again = client.post("/v1/contexts", content=keys.public_bytes, headers=t.owner)
    assert (again.status_code, again.json()["id"]) == (200, t.context_id)
    assert again.json()["key_id"] == keys.public.key_id
    blob = client.get(f"/v1/contexts/{t.context_id}/blob", headers=t.token(client, "contributor"))
    assert blob.status_code == 200
    assert hashlib.sha256(blob.content).hexdigest() == again.json()["sha256"]


@pytest.mark.parametrize("name", ["garbage", "truncated", "secret key file"])
def test_bad_contexts_are_refused(client: TestClient, keys: Keys, name: str) -> None:
    owner = bearer(client.post("/v1/admin/tenants", json={"name": "x"},
                               headers=admin_headers()).json()["owner_token"])
    body = {"garbage": os.urandom(1000), "truncated": keys.public_bytes[:-5000],
            "secret key file": keys.secret.export_secret()}[name]
    r = client.post("/v1/contexts", content=body, headers=owner)
    assert r.status_code == 422
    assert client.get("/v1/contexts", headers=owner).json() == []


def test_model_starts_with_policy_and_first_version(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys, policy={"trigger_min_samples": 100, "epochs": 3})
    model = client.get(f"/v1/models/{t.model_id}", headers=t.owner).json()
    assert model["current_version_id"] == t.version_id
    assert model["policy"]["trigger_min_samples"] == 100 and model["policy"]["number"] == 1
    (v,) = client.get(f"/v1/models/{t.model_id}/versions", headers=t.owner).json()
    assert (v["decision"], v["parent_id"], v["number"]) == ("uploaded", None, 1)


@pytest.mark.parametrize("policy", [
    {"epochs": 0}, {"learning_rate": -1}, {"lr_schedule": "cosine"}, {"momentum": 1},
    {"unknown": 1}, {"trigger_min_samples": 0},
])
def test_invalid_policy_is_refused(client: TestClient, keys: Keys,
                                   policy: dict[str, object]) -> None:
    t = make_tenant(client, keys)
    r = client.put(f"/v1/models/{t.model_id}/policy", json=policy, headers=t.owner)
    assert r.status_code == 422
    assert client.get(f"/v1/models/{t.model_id}/policy", headers=t.owner).json()["number"] == 1


def test_policy_revisions_are_kept(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    r = client.put(f"/v1/models/{t.model_id}/policy", headers=t.owner,
                   json={"trigger_interval_s": 3600, "lr_schedule": "decay", "lr_decay": 0.9})
    assert r.status_code == 200 and r.json()["number"] == 2
    assert client.get(f"/v1/models/{t.model_id}/policy", headers=t.owner).json() == r.json()


def test_model_wider_than_the_context_is_refused(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    r = client.post("/v1/models", json={"name": "w", "context_id": t.context_id,
                                        "n_features": 5000}, headers=t.owner)
    assert r.status_code == 422


def test_versions_upload_download_and_rollback(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    body = keys.model(seed=9)
    v2 = client.post(f"/v1/models/{t.model_id}/versions", content=body, headers=t.owner)
    assert v2.status_code == 201 and v2.json()["parent_id"] == t.version_id
    again = client.post(f"/v1/models/{t.model_id}/versions", content=body, headers=t.owner)
    assert (again.status_code, again.json()["id"]) == (200, v2.json()["id"])
    pulled = client.get(f"/v1/models/{t.model_id}/versions/{v2.json()['id']}/blob",
                        headers=t.owner)
    assert pulled.content == body
    model = EncryptedModel.from_bytes(keys.secret, pulled.content)
    coef, b = decrypt_model(keys.secret, model)
    assert np.allclose(coef, np.random.default_rng(9).normal(size=N_FEATURES), atol=1e-4)
    back = client.put(f"/v1/models/{t.model_id}/current", json={"version_id": t.version_id},
                      headers=t.owner)
    assert back.status_code == 200 and back.json()["current_version_id"] == t.version_id
    assert len(client.get(f"/v1/models/{t.model_id}/versions", headers=t.owner).json()) == 2


@pytest.mark.parametrize("name", ["garbage", "wrong width", "other key", "truncated"])
def test_bad_model_versions_are_refused(client: TestClient, keys: Keys, other_keys: Keys,
                                        name: str) -> None:
    t = make_tenant(client, keys)
    body = {"garbage": os.urandom(2000),
            "wrong width": encrypt_model(keys.public, np.zeros(3)).to_bytes(keys.public),
            "other key": other_keys.model(),
            "truncated": keys.model()[:-300]}[name]
    r = client.post(f"/v1/models/{t.model_id}/versions", content=body, headers=t.owner)
    assert r.status_code == 422, r.text
    assert len(client.get(f"/v1/models/{t.model_id}/versions", headers=t.owner).json()) == 1


def test_encrypted_inference_matches_plaintext(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    X = np.random.default_rng(3).normal(size=(50, N_FEATURES))
    layout = Diagonals.plan(50, N_FEATURES, keys.public.params.slots)
    features = CiphertextBatch.of(keys.public, [keys.public.encrypt(v) for v in layout.pack(X)],
                                  layout.describe())
    r = client.post(f"/v1/models/{t.model_id}/predict", content=features.to_bytes(),
                    headers=t.token(client, "predict"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    scores = CiphertextBatch.from_bytes(r.content)
    out = from_description(scores.layout)
    assert isinstance(out, SampleBlocks) and out.n_samples == 50
    z = out.unpack([keys.secret.decrypt(c) for c in scores.open(keys.secret)])
    w = np.random.default_rng(0).normal(size=N_FEATURES)
    assert np.allclose(z, X @ w + 0.1, atol=1e-3)


@pytest.mark.parametrize("name", ["garbage", "wrong width", "other key", "labels layout"])
def test_bad_inference_inputs_are_refused(client: TestClient, keys: Keys, other_keys: Keys,
                                          name: str) -> None:
    t = make_tenant(client, keys)
    body = {"garbage": os.urandom(500),
            "wrong width": keys.batches(10, d=3)[0].to_bytes(),
            "other key": other_keys.batches(10)[0].to_bytes(),
            "labels layout": keys.batches(10)[1].to_bytes()}[name]
    r = client.post(f"/v1/models/{t.model_id}/predict", content=body, headers=t.owner)
    assert r.status_code == 422, r.text


def test_inference_on_a_missing_version_is_not_found(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    r = client.post(f"/v1/models/{t.model_id}/predict?version_id={'0' * 32}",
                    content=keys.batches(10)[0].to_bytes(), headers=t.owner)
    assert r.status_code == 404


@pytest.mark.parametrize(("error", "code"), [
    (PolicyViolation("no"), 403), (EnclaveUnavailable("down"), 503),
    (EnclaveError("refused"), 409), (ParameterMismatch("p"), 422),
    (InvalidCiphertext("c"), 422), (ShapeError("s"), 422),
])
def test_errors_reach_the_client_through_one_handler(client: TestClient, keys: Keys,
                                                     refiner: object, error: Exception,
                                                     code: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_tenant(client, keys)

    def fail(*args: object) -> object:
        raise error

    monkeypatch.setattr(refiner, "predict", fail)
    r = client.post(f"/v1/models/{t.model_id}/predict",
                    content=keys.batches(10)[0].to_bytes(), headers=t.owner)
    assert (r.status_code, r.json()) == (code, {"detail": str(error)})
    assert client.get("/healthz").status_code == 200


def test_status_table_puts_subclasses_before_their_bases() -> None:
    kinds = [k for k, _, _ in ERROR_STATUS]
    for i, k in enumerate(kinds):
        assert not any(issubclass(k, earlier) for earlier in kinds[:i]), k
    assert status_for(RuntimeError("x")) == (500, "internal error")


def test_openapi_documents_binary_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/models/{model_id}/uploads"]["post"]["requestBody"]
    assert "application/cbor" in body["content"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
