"""Crafted inputs that used to crash a route (HTTP 500) now get a 4xx and store nothing.

(FAKE refiner for rounds; every check here runs before the refiner. Real CKKS.)
Each case is one request a contributor, a predict-token holder or an owner
could send; after it, the tenant's blobs, uploads, models, versions and
policy are exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cbor2
import pytest
from cloudkit import Keys, Tenant, admin_headers, blob_files, make_tenant
from fastapi.testclient import TestClient

from cipherloop.ckks import CiphertextBatch
from cipherloop.cloud.settings import Settings
from cipherloop.learn.wire import encode_samples

HUGE = 2**63


def _state(client: TestClient, t: Tenant, settings: Settings) -> dict[str, Any]:
    m = t.model_id
    h = t.owner
    return {"blobs": blob_files(settings),
            **{p: client.get(p, headers=h).json() for p in (
                "/v1/contexts", "/v1/models", f"/v1/models/{m}/uploads",
                f"/v1/models/{m}/versions", f"/v1/models/{m}/policy", "/v1/tokens")}}


def _with_layout(batch: CiphertextBatch, **change: Any) -> CiphertextBatch:
    return dataclasses.replace(batch, layout={**batch.layout, **change})


@pytest.fixture
def tenant(client: TestClient, keys: Keys) -> Tenant:
    return make_tenant(client, keys)


@pytest.mark.parametrize("field", ["n_samples", "slots"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1.5, HUGE, -1, True])
def test_upload_with_a_crafted_layout_number_is_refused(
        client: TestClient, settings: Settings, tenant: Tenant, field: str, bad: Any) -> None:
    contributor = tenant.token(client, "contributor")
    features, labels = tenant.keys.batches(8)
    before = _state(client, tenant, settings)
    for body in (encode_samples(_with_layout(features, **{field: bad}), labels),
                 encode_samples(features, _with_layout(labels, **{field: bad}))):
        r = client.post(f"/v1/models/{tenant.model_id}/uploads", content=body,
                        headers=contributor)
        assert r.status_code == 422, r.text
        assert isinstance(r.json()["detail"], str)
    assert _state(client, tenant, settings) == before


@pytest.mark.parametrize("field", ["n_samples", "slots", "n_features", "baby"])
def test_predict_with_an_infinite_layout_number_is_refused(
        client: TestClient, settings: Settings, tenant: Tenant, field: str) -> None:
    predictor = tenant.token(client, "predict")
    features, _ = tenant.keys.batches(8)
    before = _state(client, tenant, settings)
    r = client.post(f"/v1/models/{tenant.model_id}/predict", headers=predictor,
                    content=_with_layout(features, **{field: float("inf")}).to_bytes())
    assert r.status_code == 422, r.text
    assert _state(client, tenant, settings) == before


def test_model_version_with_an_infinite_layout_number_is_refused(
        client: TestClient, settings: Settings, tenant: Tenant) -> None:
    doc = cbor2.loads(tenant.keys.model(seed=3))
    coef = CiphertextBatch.from_bytes(doc["coef"])
    doc["coef"] = _with_layout(coef, n_values=float("inf")).to_bytes()
    before = _state(client, tenant, settings)
    r = client.post(f"/v1/models/{tenant.model_id}/versions", headers=tenant.owner,
                    content=cbor2.dumps(doc))
    assert r.status_code == 422, r.text
    assert _state(client, tenant, settings) == before


@pytest.mark.parametrize("route", ["uploads", "predict", "versions"])
def test_trailing_bytes_after_a_valid_cbor_body_are_refused(
        client: TestClient, settings: Settings, tenant: Tenant, route: str) -> None:
    body = {"uploads": lambda: tenant.keys.samples(8, seed=4),
            "predict": lambda: tenant.keys.batches(8)[0].to_bytes(),
            "versions": lambda: tenant.keys.model(seed=4)}[route]()
    before = _state(client, tenant, settings)
    r = client.post(f"/v1/models/{tenant.model_id}/{route}", headers=tenant.owner,
                    content=body + b"\x00trailing")
    assert r.status_code == 422, r.text
    assert "trailing" in r.json()["detail"]
    assert _state(client, tenant, settings) == before
    ok = client.post(f"/v1/models/{tenant.model_id}/{route}", headers=tenant.owner,
                     content=body)
    assert ok.status_code in (200, 201), ok.text  # the same body without the tail is fine


@pytest.mark.parametrize("policy", [
    {"batch_size": HUGE}, {"trigger_min_samples": HUGE}, {"trigger_interval_s": 1e300},
    {"release_metric": 0}, {"release_metric": "true"}, {"epochs": HUGE},
], ids=["batch_size", "trigger_min_samples", "interval", "release_metric 0",
        "release_metric str", "epochs"])
def test_out_of_range_policy_is_refused_at_both_routes(
        client: TestClient, settings: Settings, tenant: Tenant, policy: dict[str, Any]) -> None:
    before = _state(client, tenant, settings)
    r = client.put(f"/v1/models/{tenant.model_id}/policy", json=policy, headers=tenant.owner)
    assert r.status_code == 422, r.text
    r = client.post("/v1/models", headers=tenant.owner, json={
        "name": "x", "context_id": tenant.context_id, "n_features": 4, "policy": policy})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)  # schema checks come as the validation list
    assert _state(client, tenant, settings) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers_are_refused(client: TestClient, settings: Settings,
                                             tenant: Tenant, literal: str) -> None:
    before = _state(client, tenant, settings)
    r = client.put(f"/v1/models/{tenant.model_id}/policy", headers={
        **tenant.owner, "Content-Type": "application/json"},
        content=f'{{"learning_rate": {literal}}}')
    assert r.status_code == 422, r.text
    assert _state(client, tenant, settings) == before


def test_public_context_with_parameters_seal_refuses_is_unprocessable(
        client: TestClient, settings: Settings, tenant: Tenant) -> None:
    doc = cbor2.loads(tenant.keys.public_bytes)
    doc["params"]["coeff_mod_bit_sizes"] = [10, 10, 10]
    before = _state(client, tenant, settings)
    for body in (cbor2.dumps(doc), tenant.keys.public_bytes + b"\x00"):
        r = client.post("/v1/contexts", content=body, headers=tenant.owner)
        assert r.status_code == 422, r.text
    assert _state(client, tenant, settings) == before


@pytest.mark.parametrize("pre", [
    {"mean": [0.0] * 3, "scale": [1.0] * 3}, {"mean": [0.0] * 4, "scale": [1.0] * 3},
    {"mean": [0.0] * 4, "scale": [0.0] * 4}, {"mean": [1e300] * 4, "scale": [1.0] * 4}],
    ids=["3 of 4 features", "lengths differ", "zero scale", "huge mean"])
def test_preprocessing_out_of_shape_or_range_is_refused(
        client: TestClient, settings: Settings, tenant: Tenant, pre: dict[str, Any]) -> None:
    before = _state(client, tenant, settings)
    r = client.post("/v1/models", headers=tenant.owner, json={
        "name": "x", "context_id": tenant.context_id, "n_features": 4, "preprocessing": pre})
    assert r.status_code == 422, r.text
    assert _state(client, tenant, settings) == before


def test_every_token_of_the_tenant_reads_the_preprocessing(client: TestClient,
                                                           tenant: Tenant) -> None:
    pre = {"kind": "standardize", "mean": [1.0, 2.0, 3.0, 4.0], "scale": [0.5, 1.0, 2.0, 4.0]}
    m = client.post("/v1/models", headers=tenant.owner, json={
        "name": "x", "context_id": tenant.context_id, "n_features": 4, "preprocessing": pre})
    assert m.status_code == 201 and m.json()["preprocessing"] == pre
    for role in ("contributor", "predict"):
        r = client.get(f"/v1/models/{m.json()['id']}/preprocessing",
                       headers=tenant.token(client, role))
        assert r.json() == pre
    plain = client.get(f"/v1/models/{tenant.model_id}/preprocessing", headers=tenant.owner)
    assert plain.json() == {"kind": "none", "mean": [], "scale": []}


def test_owner_cannot_revoke_its_last_owner_token(client: TestClient, tenant: Tenant) -> None:
    me = client.get("/v1/whoami", headers=tenant.owner).json()
    r = client.delete(f"/v1/tokens/{me['token_id']}", headers=tenant.owner)
    assert r.status_code == 409 and "last owner token" in r.json()["detail"]
    assert client.get("/v1/whoami", headers=tenant.owner).status_code == 200
    spare = client.post(f"/v1/admin/tenants/{tenant.id}/owner-tokens", headers=admin_headers())
    assert spare.status_code == 201
    r = client.delete(f"/v1/tokens/{me['token_id']}", headers=tenant.owner)
    assert r.status_code == 200  # with a second owner token, the first may go
    assert client.get("/v1/whoami", headers=tenant.owner).status_code == 401


def test_a_model_can_be_deleted_with_everything_it_holds(client: TestClient,
                                                         tenant: Tenant) -> None:
    m = tenant.model_id
    up = client.post(f"/v1/models/{m}/uploads", content=tenant.keys.samples(8, seed=9),
                     headers=tenant.owner)
    assert up.status_code == 201
    r = client.delete(f"/v1/models/{m}", headers=tenant.owner)
    assert r.status_code == 204
    assert client.get(f"/v1/models/{m}", headers=tenant.owner).status_code == 404
    assert client.get("/v1/models", headers=tenant.owner).json() == []
    assert client.delete(f"/v1/models/{m}", headers=tenant.owner).status_code == 404


def test_method_not_allowed_lists_every_method_of_the_path(client: TestClient) -> None:
    r = client.put("/v1/tokens")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert json.loads(r.text) == {"detail": "Method Not Allowed"}
