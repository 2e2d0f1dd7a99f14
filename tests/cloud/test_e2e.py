"""End to end, all REAL: the service as OS processes (uvicorn + worker), a real enclave,
real CKKS, a round started by uploads alone, and ``kill -9`` in the middle of it.

The enclave runs as its own process here (as a TEE would, restarting from
its sealed key), so killing the service's process group leaves it up; the
service is pointed at it with ``--enclave-address``. A second test lets the
service start its own enclave, as ``serve`` does by default.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cipherloop.ckks import CiphertextBatch, Diagonals, SecretContext, preset, rotations_for_features
from cipherloop.client.data import decrypt_model, encrypt_dataset, encrypt_model
from cipherloop.cloud.wire import encode_samples

try:
    from cipherloop.learn import EnclaveClient, EnclaveProcess, EncryptedModel
except ImportError:  # pragma: no cover - the learn package is developed alongside
    pytest.skip("learn API not available yet", allow_module_level=True)

pytestmark = pytest.mark.slow

ADMIN = "e2e-admin-token-0123456789abcdef"
D = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m cipherloop.cloud.server`` in its own process group."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"service-{self.port}.log"
        env = {**os.environ, "CIPHERLOOP_ADMIN_TOKEN": ADMIN, "CIPHERLOOP_LOG_LEVEL": "info"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cipherloop.cloud.server", "--data-dir", str(data_dir),
                 "--port", str(self.port), "--poll-interval-s", "0.1", *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_up()

    def _wait_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"service did not come up:\n{self.log.read_text()}")

    def kill9(self) -> None:
        """SIGKILL the whole process group: server and worker die mid-whatever."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _wait(what: Callable[[], Any], *, timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


@pytest.fixture(scope="module")
def owner() -> SecretContext:
    return SecretContext.generate(preset("n8192"), rotations_for_features(D, 4096))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, D))
    y = (X @ np.linspace(1.0, -1.0, D) + 0.3 * rng.normal(size=400) > 0).astype(np.float64)
    return X, y


def _samples(ctx: SecretContext, X: np.ndarray, y: np.ndarray) -> bytes:
    public = ctx.public_context()
    return encode_samples(*encrypt_dataset(public, X, y).to_batches(public))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _set_up_tenant(url: str, owner: SecretContext, policy: dict[str, Any],
                   X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Owner: tenant, context, model, first version, hold-out set, a contributor token."""
    c = httpx.Client(base_url=url, timeout=120)
    tenant = c.post("/v1/admin/tenants", json={"name": "e2e"}, headers=_bearer(ADMIN)).json()
    h = _bearer(tenant["owner_token"])
    public = owner.public_context()
    ctx = c.post("/v1/contexts", content=public.serialize(), headers=h).json()
    model = c.post("/v1/models", headers=h, json={"name": "lr", "context_id": ctx["id"],
                                                  "n_features": D, "policy": policy}).json()
    first = c.post(f"/v1/models/{model['id']}/versions", headers=h,
                   content=encrypt_model(public, np.zeros(D), 0.0).to_bytes(public))
    assert first.status_code == 201, first.text
    hold = c.post(f"/v1/models/{model['id']}/uploads?kind=holdout", headers=h,
                  content=_samples(owner, X[300:], y[300:]))
    assert hold.status_code == 201, hold.text
    contributor = c.post("/v1/tokens", json={"role": "contributor"}, headers=h).json()["token"]
    predictor = c.post("/v1/tokens", json={"role": "predict"}, headers=h).json()["token"]
    return {"client": c, "owner": h, "model_id": model["id"], "first": first.json()["id"],
            "contributor": _bearer(contributor), "predict": _bearer(predictor)}


@pytest.fixture
def enclave(owner: SecretContext, tmp_path: Path) -> Iterator[EnclaveProcess]:
    with EnclaveProcess(log_path=tmp_path / "enclave.log") as proc:
        proc.client.provision_local(owner.export_secret(),
                                    {"release": ["accuracy", "log_loss"], "min_samples": 16})
        yield proc


def test_round_from_uploads_alone_survives_kill_9(tmp_path: Path, owner: SecretContext,
                                                 enclave: EnclaveProcess,
                                                 data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    data_dir = tmp_path / "data"
    service = Service(data_dir, "--enclave-address", str(enclave.socket_path))
    try:
        policy = {"trigger_min_samples": 200, "epochs": 8, "batch_size": 50,
                  "learning_rate": 1.0, "momentum": 0.5, "release_metric": True}
        t = _set_up_tenant(service.url, owner, policy, X, y)
        c, m = t["client"], t["model_id"]
        ups = [c.post(f"/v1/models/{m}/uploads", content=_samples(owner, X[i:i + 100],
                                                                   y[i:i + 100]),
                      headers=t["contributor"]) for i in (0, 100)]
        assert [u.status_code for u in ups] == [201, 201]

        def rounds() -> list[dict[str, Any]]:
            return list(c.get(f"/v1/models/{m}/rounds", headers=t["owner"]).json())

        running = _wait(lambda: [r for r in rounds() if r["state"] == "running"], timeout=60)
        service.kill9()
        assert running[0]["attempts"] == 1

        service = Service(data_dir, "--enclave-address", str(enclave.socket_path))
        c = httpx.Client(base_url=service.url, timeout=120)
        done = _wait(lambda: [r for r in c.get(f"/v1/models/{m}/rounds",
                                               headers=t["owner"]).json()
                              if r["state"] in ("done", "failed")], timeout=300, step=0.2)
        (rnd,) = done
        assert rnd["state"] == "done", rnd
        assert rnd["attempts"] == 2 and rnd["trigger"] == "samples"
        assert sorted(rnd["upload_ids"]) == sorted(u.json()["id"] for u in ups)
        assert rnd["metrics"]["metric"] == "log_loss"
        assert rnd["decision"] == "promote", rnd  # training from zeros helps on this data
        versions = c.get(f"/v1/models/{m}/versions", headers=t["owner"]).json()
        assert [v["round_id"] for v in versions] == [None, rnd["id"]]
        model = c.get(f"/v1/models/{m}", headers=t["owner"]).json()
        assert model["current_version_id"] == rnd["candidate_version_id"]

        # The owner pulls the new version and decrypts it at home.
        blob = c.get(f"/v1/models/{m}/versions/{rnd['candidate_version_id']}/blob",
                     headers=t["owner"]).content
        w, b = decrypt_model(owner, EncryptedModel.from_bytes(owner, blob))
        assert np.all(np.isfinite(w)) and np.mean((X[300:] @ w + b > 0) == y[300:]) > 0.8

        # A predict-token holder gets encrypted scores that match the decrypted model.
        layout = Diagonals.plan(40, D, owner.params.slots)
        public = owner.public_context()
        feats = CiphertextBatch.of(public, [public.encrypt(v) for v in layout.pack(X[:40])],
                                   layout.describe())
        r = c.post(f"/v1/models/{m}/predict", content=feats.to_bytes(), headers=t["predict"])
        assert r.status_code == 200, r.text
        scores = CiphertextBatch.from_bytes(r.content)
        z = layout.samples.unpack([owner.decrypt(ct) for ct in scores.open(owner)])
        assert np.allclose(z, X[:40] @ w + b, atol=1e-2)

        # Bad input leaves the real service serving.
        bad = c.post(f"/v1/models/{m}/uploads", content=b"\x00" * 1000, headers=t["owner"])
        assert bad.status_code == 422
        assert c.get("/healthz").status_code == 200
    finally:
        service.stop()


def test_serve_starts_its_own_enclave(tmp_path: Path, owner: SecretContext,
                                      data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    data_dir = tmp_path / "d"
    service = Service(data_dir)
    try:
        sock = data_dir.resolve() / "enclave.sock"
        _wait(sock.exists, timeout=30)
        EnclaveClient(sock).provision_local(owner.export_secret())
        t = _set_up_tenant(service.url, owner, {"trigger_min_samples": 100, "epochs": 1}, X, y)
        c, m = t["client"], t["model_id"]
        c.post(f"/v1/models/{m}/uploads", content=_samples(owner, X[:100], y[:100]),
               headers=t["contributor"])
        done = _wait(lambda: [r for r in c.get(f"/v1/models/{m}/rounds",
                                               headers=t["owner"]).json()
                              if r["state"] in ("done", "failed")], timeout=300, step=0.2)
        assert done[0]["state"] == "done", done
    finally:
        service.stop()
    assert not sock.exists()  # the enclave went down with the service
