"""Tokens and roles, for every endpoint of the route table.

Missing or wrong tokens get one generic 401; a valid token of the wrong
role gets one generic 403; every admitted role reaches the handler.
(Runs on the FAKE refiner; see cloudkit.)
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudkit import ADMIN, ROUTES, FakeRefiner, Keys, Route, World, bearer, build_world
from fastapi.testclient import TestClient

from cipherloop.cloud.app import create_app
from cipherloop.cloud.settings import Settings

UNAUTHORIZED = {"detail": "missing or invalid token"}
FORBIDDEN = {"detail": "this token may not do that"}
ROLES = ("owner", "contributor", "predict")
PROTECTED = [r for r in ROUTES if r.roles != {"public"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory,
          keys: Keys) -> Iterator[tuple[TestClient, World, Settings]]:
    settings = Settings(admin_token=ADMIN, data_dir=Path(tmp_path_factory.mktemp("auth")))
    with TestClient(create_app(settings, refiner=FakeRefiner())) as client:
        yield client, build_world(client, keys, name="A"), settings


def _call(client: TestClient, world: World, route: Route,
          headers: dict[str, str]) -> object:
    return client.request(route.method, world.path(route), headers=headers,
                          **world.body(route))  # type: ignore[arg-type]


@pytest.mark.parametrize("route", PROTECTED, ids=lambda r: r.id)
@pytest.mark.parametrize("headers", [
    {}, bearer("not-a-token"), {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"},
], ids=["missing", "wrong", "basic", "empty"])
def test_missing_or_wrong_token_gets_one_generic_401(
        setup: tuple[TestClient, World, Settings], route: Route,
        headers: dict[str, str]) -> None:
    client, world, _ = setup
    r = _call(client, world, route, headers)
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)  # type: ignore[attr-defined]
    assert r.headers["WWW-Authenticate"] == "Bearer"  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", [r for r in PROTECTED if r.roles != {"admin"}],
                         ids=lambda r: r.id)
def test_admin_token_is_not_a_tenant_token(setup: tuple[TestClient, World, Settings],
                                           route: Route) -> None:
    client, world, _ = setup
    r = _call(client, world, route, bearer(ADMIN))
    assert r.status_code == 401  # type: ignore[attr-defined]


@pytest.mark.parametrize(("route", "role"), [
    (r, role) for r in PROTECTED if r.roles != {"admin"} for role in ROLES if role not in r.roles
], ids=lambda v: v.id if isinstance(v, Route) else v)
def test_a_valid_token_of_the_wrong_role_gets_one_generic_403(
        setup: tuple[TestClient, World, Settings], route: Route, role: str) -> None:
    client, world, _ = setup
    r = _call(client, world, route, world.headers[role])
    assert (r.status_code, r.json()) == (403, FORBIDDEN)  # type: ignore[attr-defined]


@pytest.mark.parametrize("route", [r for r in PROTECTED if r.roles == {"admin"}],
                         ids=lambda r: r.id)
def test_tenant_tokens_are_not_admin_tokens(setup: tuple[TestClient, World, Settings],
                                            route: Route) -> None:
    client, world, _ = setup
    r = _call(client, world, route, world.headers["owner"])
    assert (r.status_code, r.json()) == (401, UNAUTHORIZED)  # type: ignore[attr-defined]


def test_contributor_may_not_upload_a_holdout_set(setup: tuple[TestClient, World, Settings],
                                                 keys: Keys) -> None:
    client, world, _ = setup
    r = client.post(f"/v1/models/{world.ids['model_id']}/uploads?kind=holdout",
                    content=keys.samples(10, seed=11), headers=world.headers["contributor"])
    assert (r.status_code, r.json()) == (403, FORBIDDEN)


def test_tokens_are_stored_only_as_sha256(setup: tuple[TestClient, World, Settings]) -> None:
    client, world, settings = setup
    secrets = [h["Authorization"].split()[1] for h in world.headers.values()]
    with sqlite3.connect(settings.data_dir / "cipherloop.db") as db:
        stored = {row[0] for row in db.execute("SELECT token_hash FROM tokens")}
    raw = (settings.data_dir / "cipherloop.db").read_bytes()
    for secret in secrets:
        assert hashlib.sha256(secret.encode()).hexdigest() in stored
        assert secret.encode() not in raw
    listed = client.get("/v1/tokens", headers=world.headers["owner"]).text
    assert not any(s in listed for s in secrets) and "hash" not in listed


def test_revoked_token_stops_working_at_once(setup: tuple[TestClient, World, Settings]) -> None:
    client, world, _ = setup
    made = client.post("/v1/tokens", json={"role": "predict"}, headers=world.headers["owner"])
    token = bearer(made.json()["token"])
    assert client.get("/v1/whoami", headers=token).status_code == 200
    r = client.delete(f"/v1/tokens/{made.json()['id']}", headers=world.headers["owner"])
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert client.get("/v1/whoami", headers=token).json() == UNAUTHORIZED


def test_admin_creates_tenants_and_recovers_owner_tokens(
        setup: tuple[TestClient, World, Settings]) -> None:
    client, _, _ = setup
    made = client.post("/v1/admin/tenants", json={"name": "new"}, headers=bearer(ADMIN)).json()
    me = client.get("/v1/whoami", headers=bearer(made["owner_token"])).json()
    assert (me["tenant_id"], me["role"]) == (made["id"], "owner")
    again = client.post(f"/v1/admin/tenants/{made['id']}/owner-tokens", headers=bearer(ADMIN))
    assert client.get("/v1/whoami", headers=bearer(again.json()["token"])).status_code == 200
    missing = client.post(f"/v1/admin/tenants/{'0' * 32}/owner-tokens", headers=bearer(ADMIN))
    assert missing.status_code == 404


# What each admitted call answers in this world (``build_world``, run in the order below):
# the handler's own answer, so a crash (500) or a refusal by the auth layer fails the test.
ADMITTED: dict[str, int] = {
    **{r.id: 200 for r in PROTECTED if r.method == "GET"},
    "GET /v1/enclave": 503,                                 # no enclave behind the FAKE refiner
    "POST /v1/enclave/attest": 503,
    "POST /v1/enclave/provision": 503,
    "POST /v1/tokens": 201,
    "DELETE /v1/tokens/{token_id}": 200,
    "DELETE /v1/models/{model_id}": 204,                    # the spare model (World.path)
    "POST /v1/contexts": 200,                               # the tenant's context, already there
    "POST /v1/models": 201,
    "PUT /v1/models/{model_id}/policy": 200,
    "POST /v1/models/{model_id}/versions": 201,
    "PUT /v1/models/{model_id}/current": 200,
    "POST /v1/models/{model_id}/uploads": 201,
    "POST /v1/models/{model_id}/rounds": 201,
    "POST /v1/models/{model_id}/rounds/{round_id}/retry": 409,  # the world's round is done
    "POST /v1/models/{model_id}/predict": 200,
}


def test_the_admitted_table_names_every_tenant_route() -> None:
    tenant_routes = {r.id for r in PROTECTED if r.roles != {"admin"}}
    assert tenant_routes <= set(ADMITTED)


# Last: these calls change the world (revoke a token, start rounds, add versions).
@pytest.mark.parametrize(("route", "role"), [
    (r, role) for r in PROTECTED for role in sorted(r.roles) if role != "admin"
], ids=lambda v: v.id if isinstance(v, Route) else v)
def test_every_admitted_role_reaches_the_handler(setup: tuple[TestClient, World, Settings],
                                                 route: Route, role: str) -> None:
    client, world, _ = setup
    r = _call(client, world, route, world.headers[role])
    assert r.status_code == ADMITTED[route.id], r.text  # type: ignore[attr-defined]
