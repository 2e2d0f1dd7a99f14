"""Tenant isolation, for every endpoint of the route table.

Tenant B, holding every kind of token, tries each route on tenant A's ids:
it gets the same 404 as for an id that doesn't exist, and A's data is
unchanged. Lists show B only its own rows; creating in B never reaches A.
A test checks that the table covers every route the app serves, so a new
route can't skip this. (Runs on the FAKE refiner; see cloudkit.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudkit import ADMIN, ROUTES, FakeRefiner, Keys, Route, World, build_world, snapshot
from fastapi.testclient import TestClient

from cipherloop.cloud.app import create_app
from cipherloop.cloud.settings import Settings
from cipherloop.learn.wire import encode_samples


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, keys: Keys,
          other_keys: Keys) -> Iterator[tuple[TestClient, World, World]]:
    settings = Settings(admin_token=ADMIN, data_dir=Path(tmp_path_factory.mktemp("iso")))
    with TestClient(create_app(settings, refiner=FakeRefiner())) as client:
        yield client, build_world(client, keys, name="A"), build_world(client, other_keys, name="B")


ID_ROUTES = [r for r in ROUTES if r.scope == "id"]
MISSING = "0" * 32


def _call(client: TestClient, route: Route, path: str, headers: dict[str, str],
          **kw: object) -> object:
    return client.request(route.method, path, headers=headers, **kw)  # type: ignore[arg-type]


def _caller_role(route: Route) -> str:
    return "owner" if "owner" in route.roles else sorted(route.roles)[0]


def test_route_table_covers_every_route_the_app_serves(
        world: tuple[TestClient, World, World]) -> None:
    paths = world[0].app.openapi()["paths"]  # type: ignore[attr-defined]
    served = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    assert served == {r.id for r in ROUTES}


@pytest.mark.parametrize("route", ID_ROUTES, ids=lambda r: r.id)
def test_foreign_ids_look_exactly_like_missing_ones(
        world: tuple[TestClient, World, World], route: Route) -> None:
    client, a, b = world
    before = snapshot(client, a)
    headers = b.headers[_caller_role(route)]
    foreign = _call(client, route, a.path(route), headers, **b.body(route))
    missing = _call(client, route, b.path(route, **{k: MISSING for k in a.ids}), headers,
                    **b.body(route))
    assert (foreign.status_code, foreign.json()) == (404, {"detail": "not found"})  # type: ignore[attr-defined]
    assert (missing.status_code, missing.json()) == (404, {"detail": "not found"})  # type: ignore[attr-defined]
    assert snapshot(client, a) == before


@pytest.mark.parametrize("route", [r for r in ID_ROUTES if r.path.count("{") == 2],
                         ids=lambda r: r.id)
def test_own_model_with_a_foreign_child_id_is_not_found(
        world: tuple[TestClient, World, World], route: Route) -> None:
    client, a, b = world
    before = snapshot(client, a)
    mixed = b.path(route, **{k: v for k, v in a.ids.items() if k != "model_id"})
    r = _call(client, route, mixed, b.headers["owner"], **b.body(route))
    assert r.status_code == 404  # type: ignore[attr-defined]
    assert snapshot(client, a) == before


def test_rollback_to_a_foreign_version_is_not_found(world: tuple[TestClient, World, World]) -> None:
    client, a, b = world
    route = next(r for r in ROUTES if r.id == "PUT /v1/models/{model_id}/current")
    r = client.put(b.path(route), headers=b.headers["owner"],
                   **b.body(route, version_id=a.ids["version_id"]))  # type: ignore[arg-type]
    assert r.status_code == 404


@pytest.mark.parametrize("route", [r for r in ROUTES if r.scope == "list"], ids=lambda r: r.id)
def test_lists_show_only_the_callers_tenant(world: tuple[TestClient, World, World],
                                            route: Route) -> None:
    client, a, b = world
    for role in route.roles:
        listed = client.get(route.path, headers=b.headers[role]).json()
        ids = {row["id"] for row in listed}
        assert ids and not ids & set(a.ids.values())


def test_creating_a_model_on_a_foreign_context_is_not_found(
        world: tuple[TestClient, World, World]) -> None:
    client, a, b = world
    r = client.post("/v1/models", headers=b.headers["owner"],
                    json={"name": "x", "context_id": a.ids["context_id"], "n_features": 4})
    assert (r.status_code, r.json()) == (404, {"detail": "not found"})


def test_a_tenant_cannot_register_another_tenants_key(
        world: tuple[TestClient, World, World]) -> None:
    client, a, b = world
    before = snapshot(client, a)
    r = client.post("/v1/contexts", content=a.keys.public_bytes, headers=b.headers["owner"])
    assert r.status_code == 409
    assert a.ids["context_id"] not in r.text
    assert snapshot(client, a) == before


def test_samples_under_another_tenants_key_are_refused(
        world: tuple[TestClient, World, World]) -> None:
    client, a, b = world
    r = client.post(f"/v1/models/{b.ids['model_id']}/uploads", headers=b.headers["owner"],
                    content=a.keys.samples(12, seed=3))
    assert r.status_code == 422 and "another key" in r.json()["detail"]


def test_mixing_batches_of_two_tenants_is_refused(world: tuple[TestClient, World, World]) -> None:
    client, a, b = world
    f, _ = b.keys.batches(12)
    _, lab = a.keys.batches(12)
    r = client.post(f"/v1/models/{b.ids['model_id']}/uploads", headers=b.headers["owner"],
                    content=encode_samples(f, lab))
    assert r.status_code == 422


def test_predicting_with_another_tenants_ciphertexts_is_refused(
        world: tuple[TestClient, World, World]) -> None:
    client, a, b = world
    r = client.post(f"/v1/models/{b.ids['model_id']}/predict", headers=b.headers["predict"],
                    content=a.keys.batches(8)[0].to_bytes())
    assert r.status_code == 422
