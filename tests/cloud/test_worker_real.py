"""The worker's round with the REAL refiner and a REAL enclave process (small data).

``test_worker.py`` scripts the round step (FAKE refiner) to test scheduling,
lineage and recovery; here the same worker runs :class:`LearnRefiner` end to
end -- encrypted refinement, the enclave's verdict on the hold-out set -- and
each of its outcomes is reached once: promote, keep for want of a hold-out
set, and keep because the owner's policy refuses the enclave a verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudkit import ADMIN, N_FEATURES, Keys, Tenant, make_keys, make_tenant
from enclavekit import provision_sim
from fastapi.testclient import TestClient

from cipherloop.ckks import rotations_for_features
from cipherloop.client.data import decrypt_model
from cipherloop.client.provisioning import holdout_pin
from cipherloop.cloud.app import create_app
from cipherloop.cloud.refiner import LearnRefiner
from cipherloop.cloud.settings import Settings
from cipherloop.cloud.worker import Worker
from cipherloop.learn import EnclaveProcess, EncryptedModel
from cipherloop.learn.wire import decode_samples

pytestmark = pytest.mark.slow

ROUND = {"trigger_min_samples": 40, "epochs": 4, "learning_rate": 1.0, "momentum": 0.5,
         "batch_size": None, "release_metric": True}


@pytest.fixture(scope="module")
def real_keys() -> Keys:
    """A key with every rotation refinement needs at 4 features."""
    return make_keys(rotations=rotations_for_features(N_FEATURES, 4096))


@pytest.fixture(scope="module")
def holdout_body(real_keys: Keys) -> bytes:
    """The owner's hold-out upload: encrypted once, so its digests can be pinned."""
    return real_keys.samples(40, seed=2)


@pytest.fixture(scope="module")
def deciding_enclave(real_keys: Keys, holdout_body: bytes,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveProcess]:
    """An enclave holding the key under a policy that allows decisions and log-loss."""
    pin = holdout_pin(*decode_samples(holdout_body, max_bytes=len(holdout_body)))
    with EnclaveProcess(state_dir=tmp_path_factory.mktemp("enclave-yes")) as proc:
        provision_sim(proc, real_keys.secret, {"release": ["log_loss"], "min_samples": 16,
                                               "holdouts": [pin]})
        yield proc


@pytest.fixture(scope="module")
def silent_enclave(real_keys: Keys, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[EnclaveProcess]:
    """An enclave holding the key under a policy that releases nothing, not even a decision."""
    with EnclaveProcess(state_dir=tmp_path_factory.mktemp("enclave-no")) as proc:
        provision_sim(proc, real_keys.secret, {"release": [], "allow_decision": False})
        yield proc


def _service(tmp_path: Path, enclave: EnclaveProcess) -> Iterator[tuple[TestClient, Worker]]:
    settings = Settings(admin_token=ADMIN, data_dir=tmp_path / "data", max_body_bytes=256 << 20,
                        poll_interval_s=0.01, lease_s=60.0, retry_backoff_s=0.0)
    refiner = LearnRefiner(enclave.client)
    with TestClient(create_app(settings, refiner=refiner)) as client:
        s = client.app.state.services  # type: ignore[attr-defined]
        yield client, Worker(sessions=s.sessions, blobs=s.blobs, refiner=refiner,
                             settings=s.settings)


@pytest.fixture
def deciding(tmp_path: Path, deciding_enclave: EnclaveProcess) -> Iterator[tuple[TestClient, Worker]]:
    yield from _service(tmp_path, deciding_enclave)


@pytest.fixture
def silent(tmp_path: Path, silent_enclave: EnclaveProcess) -> Iterator[tuple[TestClient, Worker]]:
    yield from _service(tmp_path, silent_enclave)


def _upload(client: TestClient, t: Tenant, n: int, seed: int, kind: str = "data",
            body: bytes | None = None) -> None:
    r = client.post(f"/v1/models/{t.model_id}/uploads?kind={kind}",
                    content=body if body is not None else t.keys.samples(n, seed=seed),
                    headers=t.owner)
    assert r.status_code == 201, r.text


def _run_one_round(client: TestClient, worker: Worker, t: Tenant) -> dict[str, Any]:
    done = worker.tick()
    assert done is not None and done.state == "done", done and done.error
    (rnd,) = client.get(f"/v1/models/{t.model_id}/rounds", headers=t.owner).json()
    return dict(rnd)


def _weights(client: TestClient, t: Tenant, version_id: str) -> tuple[np.ndarray, float]:
    blob = client.get(f"/v1/models/{t.model_id}/versions/{version_id}/blob", headers=t.owner)
    assert blob.status_code == 200
    keys = t.keys
    return decrypt_model(keys.secret, EncryptedModel.from_bytes(keys.secret, blob.content))


def _current(client: TestClient, t: Tenant) -> str:
    return str(client.get(f"/v1/models/{t.model_id}", headers=t.owner).json()["current_version_id"])


def test_real_round_promotes_a_better_candidate(deciding: tuple[TestClient, Worker],
                                               real_keys: Keys, holdout_body: bytes) -> None:
    client, worker = deciding
    t = make_tenant(client, real_keys, policy=ROUND)
    _upload(client, t, 40, 2, "holdout", body=holdout_body)  # the set the owner pinned
    _upload(client, t, 40, 1)
    rnd = _run_one_round(client, worker, t)
    assert rnd["decision"] == "promote", rnd
    assert _current(client, t) == rnd["candidate_version_id"]
    metrics = rnd["metrics"]
    assert metrics["metric"] == "log_loss" and metrics["holdout_samples"] == 40
    assert metrics["candidate"] < metrics["current"]  # released rounded, as the policy allows
    assert metrics["candidate"] == round(metrics["candidate"], 3)
    assert rnd["stats"]["n_samples"] == 40 and rnd["stats"]["steps"] == ROUND["epochs"]
    w0, _ = _weights(client, t, t.version_id)
    w1, _ = _weights(client, t, rnd["candidate_version_id"])
    assert np.abs(w1 - w0).max() > 1e-2  # the candidate really was refined


def test_real_round_without_holdout_keeps_the_current_model(deciding: tuple[TestClient, Worker],
                                                           real_keys: Keys) -> None:
    client, worker = deciding
    t = make_tenant(client, real_keys, policy=ROUND)
    _upload(client, t, 40, 1)
    rnd = _run_one_round(client, worker, t)
    assert rnd["decision"] == "keep"
    assert "no hold-out set" in rnd["reason"]
    assert rnd["metrics"] is None
    assert _current(client, t) == t.version_id
    w0, _ = _weights(client, t, t.version_id)
    w1, _ = _weights(client, t, rnd["candidate_version_id"])  # stored, just not current
    assert np.abs(w1 - w0).max() > 1e-2


def test_real_round_turns_a_policy_refusal_into_keep(silent: tuple[TestClient, Worker],
                                                    real_keys: Keys) -> None:
    client, worker = silent
    t = make_tenant(client, real_keys, policy=ROUND)
    _upload(client, t, 40, 2, "holdout")
    _upload(client, t, 40, 1)
    rnd = _run_one_round(client, worker, t)
    assert rnd["decision"] == "keep"
    assert rnd["reason"].startswith("kept: the enclave gave no verdict")
    assert rnd["metrics"] is None  # nothing released, though the model policy asked for it
    assert _current(client, t) == t.version_id
    assert rnd["candidate_version_id"] is not None
