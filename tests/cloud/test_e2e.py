"""End to end, all REAL: the service as OS processes (uvicorn, worker, simulated enclave),
real CKKS, the tenant's key provisioned by attestation through the service's
relay, a round started by uploads alone, and ``kill -9`` in the middle of it.
The round is held mid-way on purpose (its enclave is stopped with SIGSTOP once
the key is provisioned), so the kill always lands while the round runs.

The service starts its own enclave with its state in ``<data_dir>/enclave``;
``kill -9`` of the service's process group takes the enclave down too, so
the restarted service's new enclave must serve the tenant from its sealed
key, without the owner provisioning again. A second test points the service
at an enclave it did not start (``--enclave-address``) and checks the
relay's refusals over real HTTP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cloudkit import RelayLink, b64, wait_for
from servicekit import start_service

from cipherloop.ckks import CiphertextBatch, Diagonals, SecretContext, preset, rotations_for_features
from cipherloop.client.data import decrypt_model, encrypt_batches, encrypt_dataset, encrypt_model
from cipherloop.client.provisioning import holdout_pin, provision, simulated_policy
from cipherloop.cloud.supervise import read_lock_info
from cipherloop.errors import EnclaveUnavailable
from cipherloop.learn import EnclaveClient, EnclaveProcess, EncryptedModel
from cipherloop.learn.wire import encode_samples

pytestmark = pytest.mark.slow

ADMIN = "e2e-admin-token-0123456789abcdef"
D = 6


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


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data directory with a short path, so the enclave's socket sits inside it."""
    path = Path(tempfile.mkdtemp(prefix="cl-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _tenant(url: str, owner: SecretContext, *, name: str = "e2e") -> dict[str, Any]:
    """Admin makes a tenant; its owner registers the public context."""
    c = httpx.Client(base_url=url, timeout=120)
    tenant = c.post("/v1/admin/tenants", json={"name": name}, headers=_bearer(ADMIN)).json()
    h = _bearer(tenant["owner_token"])
    ctx = c.post("/v1/contexts", content=owner.public_context().serialize(), headers=h)
    assert ctx.status_code == 201, ctx.text
    return {"client": c, "owner": h, "context_id": ctx.json()["id"]}


def _set_up_model(t: dict[str, Any], owner: SecretContext, policy: dict[str, Any],
                  X: np.ndarray, y: np.ndarray, hold: tuple[CiphertextBatch, CiphertextBatch]
                  ) -> None:
    """Owner: model, first version, hold-out set, a contributor and a predict token."""
    c, h = t["client"], t["owner"]
    public = owner.public_context()
    model = c.post("/v1/models", headers=h, json={"name": "lr", "context_id": t["context_id"],
                                                  "n_features": D, "policy": policy}).json()
    first = c.post(f"/v1/models/{model['id']}/versions", headers=h,
                   content=encrypt_model(public, np.zeros(D), 0.0).to_bytes(public))
    assert first.status_code == 201, first.text
    hold = c.post(f"/v1/models/{model['id']}/uploads?kind=holdout", headers=h,
                  content=encode_samples(*hold))
    assert hold.status_code == 201, hold.text
    contributor = c.post("/v1/tokens", json={"role": "contributor"}, headers=h).json()["token"]
    predictor = c.post("/v1/tokens", json={"role": "predict"}, headers=h).json()["token"]
    t.update(model_id=model["id"], first=first.json()["id"], holdout=hold.json()["id"],
             contributor=_bearer(contributor), predict=_bearer(predictor))


def _rounds(c: httpx.Client, t: dict[str, Any]) -> list[dict[str, Any]]:
    return list(c.get(f"/v1/models/{t['model_id']}/rounds", headers=t["owner"]).json())


def test_round_from_uploads_alone_survives_kill_9_on_the_sealed_key(
        short_dir: Path, owner: SecretContext, data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    data_dir = short_dir / "data"
    service = start_service(data_dir, admin_token=ADMIN, poll_interval_s=0.1,
                            env={"CIPHERLOOP_LOG_LEVEL": "info"})
    sock = Path(read_lock_info(data_dir)["enclave_socket"])  # a fresh path per start
    enclave_pid: int | None = None
    try:
        root = data_dir.resolve() / "enclave" / "platform" / "sim-root.crt.pem"
        assert "SIMULATED TEE" in service.log() and str(root) in service.log()
        assert root.is_file()  # made by the enclave at start, before any owner asks
        t = _tenant(service.url, owner)
        c = t["client"]
        hold = encrypt_batches(owner, X[300:], y[300:])  # pinned: releases only about these
        verified = provision(RelayLink(c, t["owner"]), owner, simulated_policy(data_dir / "enclave"),
                             policy={"release": ["accuracy", "log_loss"], "min_samples": 16,
                                     "holdouts": [holdout_pin(*hold)]},
                             quiet_simulation=True)
        assert verified.simulated
        policy = {"trigger_min_samples": 200, "epochs": 8, "batch_size": 50,
                  "learning_rate": 1.0, "momentum": 0.5, "release_metric": True}
        _set_up_model(t, owner, policy, X, y, hold)
        m = t["model_id"]
        # Hold the round: freeze the service's enclave, so the round's first enclave call
        # waits (its timeout is minutes) and the round cannot finish before the kill.
        enclave_pid = int(EnclaveClient(sock, timeout=30).hello()["pid"])
        os.kill(enclave_pid, signal.SIGSTOP)
        ups = [c.post(f"/v1/models/{m}/uploads", content=_samples(owner, X[i:i + 100],
                                                                   y[i:i + 100]),
                      headers=t["contributor"]) for i in (0, 100)]
        assert [u.status_code for u in ups] == [201, 201]

        running = wait_for(lambda: [r for r in _rounds(c, t) if r["state"] == "running"], timeout=60)
        time.sleep(0.5)  # not a race: the round is blocked on the frozen enclave
        assert [(r["state"], r["attempts"]) for r in _rounds(c, t)] == [("running", 1)]
        service.kill9()
        enclave_pid = None  # SIGKILL reaches stopped processes; the group is gone
        assert running[0]["attempts"] == 1
        with pytest.raises(EnclaveUnavailable):  # the enclave went down with the service
            EnclaveClient(sock, timeout=5).hello()

        service = start_service(data_dir, admin_token=ADMIN, poll_interval_s=0.1,
                                env={"CIPHERLOOP_LOG_LEVEL": "info"})
        assert Path(read_lock_info(data_dir)["enclave_socket"]) != sock  # never the old path
        sock = Path(read_lock_info(data_dir)["enclave_socket"])
        # A new enclave process, serving the tenant's key from sealed storage: nobody provisioned.
        assert owner.key_id in EnclaveClient(sock, timeout=30).hello()["keys"]
        c = httpx.Client(base_url=service.url, timeout=120)
        done = wait_for(lambda: [r for r in _rounds(c, t) if r["state"] in ("done", "failed")],
                     timeout=300, step=0.2)
        (rnd,) = done
        assert rnd["state"] == "done", rnd
        assert rnd["attempts"] == 2 and rnd["trigger"] == "samples"
        assert sorted(rnd["upload_ids"]) == sorted(u.json()["id"] for u in ups)
        assert rnd["holdout_id"] == t["holdout"]
        assert rnd["metrics"]["metric"] == "log_loss"
        assert rnd["decision"] == "promote", rnd  # training from zeros helps on this data
        assert len(_rounds(c, t)) == 1
        uploads = c.get(f"/v1/models/{m}/uploads", headers=t["owner"]).json()
        assert len(uploads) == 3
        assert {u["id"]: u["round_id"] for u in uploads if u["kind"] == "data"} == {
            u.json()["id"]: rnd["id"] for u in ups}
        versions = c.get(f"/v1/models/{m}/versions", headers=t["owner"]).json()
        assert [v["round_id"] for v in versions] == [None, rnd["id"]]
        assert [v["number"] for v in versions] == [1, 2]
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
        if enclave_pid is not None:  # failed while it was frozen: let it take SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(enclave_pid, signal.SIGCONT)
        service.stop()
    assert not sock.exists()  # the enclave went down with the service


class _Capture(RelayLink):
    """Attests through the service's relay; keeps the envelope instead of sending it."""

    envelopes: list[tuple[bytes, bytes]]

    def provision(self, session_id: bytes, envelope: bytes) -> str:
        self.envelopes.append((session_id, envelope))
        return ""


def _envelope(c: httpx.Client, h: dict[str, str], key: SecretContext,
              state_dir: Path) -> tuple[bytes, bytes]:
    """The owner's real protocol through the relay, up to a verified offer: (session, envelope)."""
    link = _Capture(c, h)
    link.envelopes = []
    provision(link, key, simulated_policy(state_dir), quiet_simulation=True)
    (out,) = link.envelopes
    return out


def test_relay_refusals_over_http_with_an_external_enclave(
        tmp_path: Path, owner: SecretContext) -> None:
    with EnclaveProcess(state_dir=tmp_path / "enclave", log_path=tmp_path / "enclave.log") as enc:
        service = start_service(tmp_path / "data", admin_token=ADMIN, poll_interval_s=0.1,
                                args=["--enclave-address", str(enc.socket_path)],
                                env={"CIPHERLOOP_LOG_LEVEL": "info"})
        try:
            t = _tenant(service.url, owner)
            c, h = t["client"], t["owner"]
            info = c.get("/v1/enclave", headers=h).json()
            assert info["platform"] == "sim" and info["simulated"] is True

            def send(session_id: bytes, env: bytes, headers: dict[str, str] = h) -> httpx.Response:
                return c.post("/v1/enclave/provision", headers=headers,
                              json={"session_id": b64(session_id), "envelope": b64(env)})

            session, envelope = _envelope(c, h, owner, enc.state_dir)
            contributor = _bearer(c.post("/v1/tokens", json={"role": "contributor"},
                                         headers=h).json()["token"])
            assert send(session, envelope, contributor).status_code == 403
            assert c.post("/v1/enclave/attest", headers=contributor,
                          json={"nonce": b64(bytes(32)), "session_id": b64(bytes(16))}
                          ).status_code == 403
            assert send(bytes(16), envelope).status_code == 400  # a session never opened
            tampered = bytearray(envelope)
            tampered[-20] ^= 0x80
            r = send(session, bytes(tampered))
            assert r.status_code == 400 and "provisioning failed" in r.json()["detail"]
            assert b64(bytes(tampered))[-60:-20] not in r.text and len(r.content) < 300
            assert owner.key_id not in enc.client.hello()["keys"]

            # A key this tenant never registered: the enclave takes it, the service says 409.
            r = send(*_envelope(c, h, SecretContext.generate(preset("n8192")), enc.state_dir))
            assert (r.status_code, r.json()) == (409, {"detail": "key is not registered by this tenant"})

            # And the tenant's own key goes through.
            ok = send(*_envelope(c, h, owner, enc.state_dir))
            assert (ok.status_code, ok.json()) == (200, {"key_id": owner.key_id})
            assert owner.key_id in enc.client.hello()["keys"]
        finally:
            service.stop()


def test_service_start_takes_another_port_when_its_port_was_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The port race of ``free_port``, forced: the first port is taken before the service binds."""
    import socket

    from cipherloop.cloud import process

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, process.free_port()])
        monkeypatch.setattr(process, "free_port", lambda: next(ports))
        service = start_service(tmp_path / "data", admin_token=ADMIN)
        try:
            assert service.port != taken
            assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
            first_log = tmp_path / f"service-{taken}.log"
            assert "address already in use" in first_log.read_text().lower()
        finally:
            service.stop()
