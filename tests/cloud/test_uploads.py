"""Sample uploads: every bad input is refused before anything is stored; good ones are
idempotent by content and acknowledged only once durable. (FAKE refiner; see cloudkit.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import numpy as np
import pytest
from cloudkit import (
    ADMIN,
    FakeRefiner,
    Keys,
    Tenant,
    blob_files,
    make_tenant,
)
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from cipherloop.ckks import CiphertextBatch, CkksParams, Diagonals, SecretContext
from cipherloop.client.data import encrypt_dataset
from cipherloop.cloud import crud
from cipherloop.cloud.app import create_app
from cipherloop.cloud.blobs import BlobStore
from cipherloop.cloud.settings import Settings
from cipherloop.learn.wire import encode_samples


@pytest.fixture(scope="module")
def foreign_params() -> SecretContext:
    """A key under other CKKS parameters (same ring degree, other primes)."""
    return SecretContext.generate(CkksParams(8192, (60, 40, 40, 60), 40), [])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory,
           keys: Keys) -> Iterator[tuple[TestClient, Tenant, Settings]]:
    settings = Settings(admin_token=ADMIN, data_dir=Path(tmp_path_factory.mktemp("up")))
    with TestClient(create_app(settings, refiner=FakeRefiner())) as client:
        yield client, make_tenant(client, keys), settings


def _swap(batch: CiphertextBatch, **changes: object) -> CiphertextBatch:
    return dataclasses.replace(batch, **changes)  # type: ignore[arg-type]


def _encrypt(keys: Keys, n: int, d: int, *, level: int | None = None
             ) -> tuple[CiphertextBatch, CiphertextBatch]:
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(n, d)), rng.integers(0, 2, n).astype(float)
    if level is None:
        return encrypt_dataset(keys.public, X, y).to_batches(keys.public)
    layout = Diagonals.plan(n, d, keys.public.params.slots)
    f = [keys.public.encrypt(v, level=level) for v in layout.pack(X)]
    lab = [keys.public.encrypt(v, level=0) for v in layout.samples.pack(y)]
    return (CiphertextBatch.of(keys.public, f, layout.describe()),
            CiphertextBatch.of(keys.public, lab, layout.samples.describe()))


BadBody = Callable[[Keys, Keys, SecretContext], bytes]


def _bad_bodies() -> dict[str, BadBody]:
    def pair(f: Callable[[CiphertextBatch, CiphertextBatch], tuple[CiphertextBatch,
                                                                   CiphertextBatch]]) -> BadBody:
        def make(keys: Keys, other: Keys, foreign: SecretContext) -> bytes:
            return encode_samples(*f(*keys.batches(20)))
        return make

    def foreign_cts(keys: Keys, other: Keys, foreign: SecretContext) -> bytes:
        f, lab = keys.batches(20)
        alien = foreign.public_context().encrypt([1.0]).to_bytes()
        return encode_samples(_swap(f, items=(alien,) * len(f.items)), lab)

    return {
        "empty body": lambda k, o, x: b"",
        "garbage": lambda k, o, x: os.urandom(4096),
        "truncated": lambda k, o, x: k.samples(20)[:-1000],
        "not a sample upload": lambda k, o, x: bytes(cbor2.dumps({"format": "x"})),
        "truncated batch inside": lambda k, o, x: bytes(cbor2.dumps({
            "format": "cipherloop-samples/v1", "features": k.batches(20)[0].to_bytes()[:-99],
            "labels": k.batches(20)[1].to_bytes()})),
        "wrong parameter digest": pair(lambda f, y: (_swap(f, params_digest="0" * 64), y)),
        "wrong key id": pair(lambda f, y: (_swap(f, key_id="1" * 32),
                                           _swap(y, key_id="1" * 32))),
        "another tenant's key": lambda k, o, x: o.samples(20),
        "garbage ciphertexts": pair(lambda f, y: (_swap(f, items=tuple(
            os.urandom(len(b)) for b in f.items)), y)),
        "truncated ciphertext": pair(lambda f, y: (_swap(f, items=(f.items[0][:-64],)
                                                         + f.items[1:]), y)),
        "ciphertexts of other parameters": foreign_cts,
        "too few features": lambda k, o, x: encode_samples(*_encrypt(k, 20, 3)),
        "too many features": lambda k, o, x: encode_samples(*_encrypt(k, 20, 6)),
        "feature ciphertexts at level 0": lambda k, o, x: encode_samples(
            *_encrypt(k, 20, 4, level=0)),
        "labels for other samples": lambda k, o, x: encode_samples(
            k.batches(20)[0], k.batches(30)[1]),
        "labels as features": pair(lambda f, y: (f, f)),
        "features as labels": pair(lambda f, y: (y, y)),
        "missing ciphertext": pair(lambda f, y: (_swap(f, items=f.items[:-1]), y)),
        "extra ciphertext": pair(lambda f, y: (_swap(f, items=f.items + f.items[:1]), y)),
        "missing label ciphertext": pair(lambda f, y: (f, _swap(y, items=()))),
        "unknown layout": pair(lambda f, y: (_swap(f, layout={"kind": "spiral"}), y)),
        "negative sample count": pair(lambda f, y: (
            _swap(f, layout={**f.layout, "n_samples": -1}), y)),
    }


BAD = _bad_bodies()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_uploads_are_refused_and_nothing_is_stored(
        shared: tuple[TestClient, Tenant, Settings], other_keys: Keys,
        foreign_params: SecretContext, name: str) -> None:
    client, t, settings = shared
    body = BAD[name](t.keys, other_keys, foreign_params)
    blobs_before = blob_files(settings)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert client.get(f"/v1/models/{t.model_id}/uploads", headers=t.owner).json() == []
    assert blob_files(settings) == blobs_before
    assert list((settings.blob_dir / "tmp").iterdir()) == []


def test_service_keeps_serving_after_bad_input(shared: tuple[TestClient, Tenant, Settings]
                                               ) -> None:
    client, t, _ = shared
    client.post(f"/v1/models/{t.model_id}/uploads", content=b"\xff" * 100, headers=t.owner)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=t.keys.samples(20, seed=42),
                    headers=t.owner)
    assert r.status_code == 201
    assert client.get("/healthz").status_code == 200


@pytest.fixture
def small(tmp_path: Path, keys: Keys) -> Iterator[tuple[TestClient, Tenant]]:
    """An app whose body limit (1 MiB) is below a sample upload (about 1.6 MB)."""
    big = Settings(admin_token=ADMIN, data_dir=tmp_path)
    with TestClient(create_app(big, refiner=FakeRefiner())) as client:
        tenant = make_tenant(client, keys)
    with TestClient(create_app(big.with_(max_body_bytes=1 << 20),
                               refiner=FakeRefiner())) as client:
        yield client, tenant


def test_body_over_limit_is_refused_from_content_length(small: tuple[TestClient, Tenant],
                                                        keys: Keys) -> None:
    client, t = small
    body = keys.samples(100)
    assert len(body) > 1 << 20
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_body_over_limit_is_refused_while_streaming(small: tuple[TestClient, Tenant],
                                                    keys: Keys) -> None:
    client, t = small
    body = keys.samples(100)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for i in range(0, len(body), 256 << 10):
            yield body[i:i + (256 << 10)]

    r = client.post(f"/v1/models/{t.model_id}/uploads", content=chunks(), headers=t.owner)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert client.get(f"/v1/models/{t.model_id}/uploads", headers=t.owner).json() == []


def test_json_body_over_limit_is_refused(small: tuple[TestClient, Tenant]) -> None:
    client, t = small
    r = client.put(f"/v1/models/{t.model_id}/policy", headers=t.owner,
                   content=b'{"epochs": 1' + b" " * (3 << 20) + b"}")
    assert r.status_code == 413


def test_malformed_content_length_is_refused(small: tuple[TestClient, Tenant]) -> None:
    client, t = small
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=b"x",
                    headers={**t.owner, "Content-Length": "lots"})
    assert r.status_code == 400


def test_upload_is_idempotent_by_content(client: TestClient, keys: Keys,
                                         settings: Settings) -> None:
    t = make_tenant(client, keys)
    body = keys.samples(20)
    first = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    again = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert first.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert first.json()["n_samples"] == 20
    assert len(client.get(f"/v1/models/{t.model_id}/uploads", headers=t.owner).json()) == 1
    holdout = client.post(f"/v1/models/{t.model_id}/uploads?kind=holdout", content=body,
                          headers=t.owner)
    assert holdout.status_code == 409


def test_ack_means_row_committed_and_blob_durable(client: TestClient, keys: Keys,
                                                  settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_tenant(client, keys)
    body = keys.samples(20)
    digest = hashlib.sha256(body).hexdigest()
    store = BlobStore(settings.blob_dir)
    real = crud.add_upload
    seen: list[bool] = []

    def add_upload(*args: object, **kw: object) -> object:
        seen.append(store.exists(digest))  # the blob is in place before the row is written
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(crud, "add_upload", add_upload)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    assert r.status_code == 201 and seen == [True]
    # A separate connection (as after a crash and restart) sees the row; the blob verifies.
    with sqlite3.connect(settings.data_dir / "cipherloop.db") as db:
        rows = db.execute("SELECT id, sha256 FROM uploads").fetchall()
    assert rows == [(r.json()["id"], digest)]
    assert store.read(digest) == body


def test_failed_commit_is_not_acknowledged_and_a_retry_stores_once(
        client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_tenant(client, keys)
    body = keys.samples(20)
    real = crud.add_upload

    def broken(*args: object, **kw: object) -> object:
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(crud, "add_upload", broken)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    assert (r.status_code, r.json()) == (503, {"detail": "database unavailable"})
    monkeypatch.setattr(crud, "add_upload", real)
    assert client.get(f"/v1/models/{t.model_id}/uploads", headers=t.owner).json() == []
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    assert r.status_code == 201
    assert len(client.get(f"/v1/models/{t.model_id}/uploads", headers=t.owner).json()) == 1


def test_failed_blob_write_is_not_acknowledged(client: TestClient, keys: Keys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_tenant(client, keys)

    def full(self: BlobStore, data: bytes) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(BlobStore, "put", full)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=keys.samples(20),
                    headers=t.owner)
    assert (r.status_code, r.json()) == (503, {"detail": "storage unavailable"})
    assert client.get(f"/v1/models/{t.model_id}/uploads", headers=t.owner).json() == []


def test_same_samples_for_two_models_are_two_uploads_of_one_blob(
        client: TestClient, keys: Keys, settings: Settings) -> None:
    t = make_tenant(client, keys)
    other = client.post("/v1/models", json={"name": "m2", "context_id": t.context_id,
                                            "n_features": 4}, headers=t.owner).json()
    body = keys.samples(20)
    a = client.post(f"/v1/models/{t.model_id}/uploads", content=body, headers=t.owner)
    b = client.post(f"/v1/models/{other['id']}/uploads", content=body, headers=t.owner)
    assert (a.status_code, b.status_code) == (201, 201) and a.json()["id"] != b.json()["id"]
    digest = hashlib.sha256(body).hexdigest()
    assert [p.name for p in blob_files(settings)].count(digest) == 1


def test_contributor_uploads_data(client: TestClient, keys: Keys) -> None:
    t = make_tenant(client, keys)
    r = client.post(f"/v1/models/{t.model_id}/uploads", content=keys.samples(20),
                    headers=t.token(client, "contributor"))
    assert r.status_code == 201 and r.json()["kind"] == "data"


