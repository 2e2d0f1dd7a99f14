"""Attested key provisioning relayed through the service, against a REAL simulated enclave.

The app runs in-process (``TestClient``, FAKE refiner: no rounds run here),
but ``/v1/enclave/*`` talks to a real enclave process started WITHOUT local
provisioning: the owner's side is the real protocol
(:func:`cipherloop.client.provisioning.provision`, the sim root pinned,
the local measurement allowlisted). ``test_e2e.py`` does the same through a
real server and then trains with the key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cloudkit import ADMIN, FakeRefiner, Keys, RelayLink, b64, bearer, make_keys
from fastapi.testclient import TestClient

from cipherloop.attest import SimulatedEvidenceWarning, new_challenge, verify_offer, wrap_key
from cipherloop.ckks.context import _pack
from cipherloop.client.provisioning import local_measurement, provision, simulated_policy
from cipherloop.cloud.app import create_app
from cipherloop.cloud.relay import PROVISIONING_FAILED
from cipherloop.cloud.settings import Settings
from cipherloop.errors import ProvisioningFailed
from cipherloop.learn import EnclaveProcess

FAILED = {"detail": PROVISIONING_FAILED}
NOT_REGISTERED = {"detail": "key is not registered by this tenant"}


@dataclass
class Setup:
    client: TestClient
    enclave: EnclaveProcess
    owners: dict[str, dict[str, str]]  # tenant name -> owner headers

    def link(self, tenant: str) -> RelayLink:
        return RelayLink(self.client, self.owners[tenant])

    def policy(self) -> Any:
        return simulated_policy(self.enclave.state_dir)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, keys: Keys,
          other_keys: Keys) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("relay")
    settings = Settings(admin_token=ADMIN, data_dir=root / "data")
    with EnclaveProcess(state_dir=root / "enclave", log_path=root / "enclave.log") as proc, \
            TestClient(create_app(settings, refiner=FakeRefiner(), enclave=proc.client)) as client:
        owners = {}
        for name, k in (("A", keys), ("B", other_keys)):
            made = client.post("/v1/admin/tenants", json={"name": name}, headers=bearer(ADMIN))
            owners[name] = bearer(made.json()["owner_token"])
            r = client.post("/v1/contexts", content=k.public_bytes, headers=owners[name])
            assert r.status_code == 201, r.text
        yield Setup(client, proc, owners)


def _envelope(link: RelayLink, setup: Setup, secret: bytes, key_id: str, params_digest: str
              ) -> tuple[bytes, bytes]:
    """The owner's half by hand, envelope kept: (session id, envelope). Skips the owner's key check."""
    challenge = new_challenge()
    offer = link.attest(challenge.nonce, challenge.session_id)
    with pytest.warns(SimulatedEvidenceWarning):
        verified = verify_offer(offer, challenge, setup.policy())
    policy = {"version": time.time_ns() // 1000}  # newer than any earlier provisioning
    envelope = wrap_key(verified, secret, key_id, params_digest, policy, challenge.nonce,
                        challenge.session_id)
    return challenge.session_id, envelope


def _good_envelope(setup: Setup, tenant: str, keys: Keys) -> tuple[bytes, bytes]:
    return _envelope(setup.link(tenant), setup, keys.secret.export_secret(), keys.secret.key_id,
                     keys.secret.params.digest())


def _send(setup: Setup, tenant: str, session_id: bytes, envelope: bytes) -> Any:
    return setup.client.post("/v1/enclave/provision", headers=setup.owners[tenant],
                             json={"session_id": b64(session_id), "envelope": b64(envelope)})


def test_enclave_identity_says_it_is_simulated(setup: Setup) -> None:
    r = setup.client.get("/v1/enclave", headers=setup.owners["A"])
    assert r.json() == {"platform": "sim", "measurement": local_measurement(), "simulated": True}


def test_attested_provisioning_through_the_relay_installs_and_seals_the_key(
        setup: Setup, keys: Keys) -> None:
    verified = provision(setup.link("A"), keys.secret, setup.policy(), quiet_simulation=True,
                         policy={"release": ["log_loss"]})
    assert verified.simulated and verified.measurement == local_measurement()
    assert keys.secret.key_id in setup.enclave.client.hello()["keys"]
    sealed = setup.enclave.state_dir / "sealed-keys" / f"{keys.secret.key_id}.sealed"
    assert sealed.is_file()


def test_the_offer_is_the_enclaves_offer_as_cbor(setup: Setup) -> None:
    nonce, session = bytes(range(32)), bytes(range(16))
    r = setup.client.post("/v1/enclave/attest", headers=setup.owners["A"],
                          json={"nonce": b64(nonce), "session_id": b64(session)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/cbor"
    offer = cbor2.loads(r.content)
    assert set(offer) == {"platform", "evidence", "public_key", "session_id", "collateral"}
    assert offer["platform"] == "sim" and offer["session_id"] == session
    assert len(offer["public_key"]) == 32 and offer["evidence"]


@pytest.mark.parametrize(("nonce", "session"), [
    (b64(bytes(31)), b64(bytes(16))), (b64(bytes(32)), b64(bytes(17))),
    ("not base64!", b64(bytes(16))), (b64(bytes(32)), ""),
], ids=["short nonce", "long session", "not base64", "empty session"])
def test_challenge_of_the_wrong_size_is_unprocessable(setup: Setup, nonce: str,
                                                      session: str) -> None:
    r = setup.client.post("/v1/enclave/attest", headers=setup.owners["A"],
                          json={"nonce": nonce, "session_id": session})
    assert r.status_code == 422
    (err,) = r.json()["detail"]  # the schema's own size check, naming the field, not the value
    assert err["loc"][-1] in ("nonce", "session_id") and nonce not in r.text


def test_envelope_for_another_session_is_refused(setup: Setup, keys: Keys) -> None:
    session, envelope = _good_envelope(setup, "A", keys)
    never_opened = _send(setup, "A", bytes(16), envelope)
    other, _ = _good_envelope(setup, "A", keys)  # opened, but the envelope is bound to `session`
    wrong = _send(setup, "A", other, envelope)
    assert (never_opened.status_code, never_opened.json()) == (400, FAILED)
    assert (wrong.status_code, wrong.json()) == (400, FAILED)


def test_tampered_envelope_is_refused_without_echo_and_spends_the_session(
        setup: Setup, keys: Keys) -> None:
    session, envelope = _good_envelope(setup, "A", keys)
    tampered = bytearray(envelope)
    tampered[len(tampered) // 2] ^= 1
    r = _send(setup, "A", session, bytes(tampered))
    assert (r.status_code, r.json()) == (400, FAILED)
    assert b64(bytes(tampered))[100:140] not in r.text
    again = _send(setup, "A", session, envelope)  # one try per session
    assert (again.status_code, again.json()) == (400, FAILED)


def test_malformed_envelope_field_is_not_echoed(setup: Setup) -> None:
    secretish = "c2VjcmV0" * 40 + "!"
    r = setup.client.post("/v1/enclave/provision", headers=setup.owners["A"],
                          json={"session_id": b64(bytes(16)), "envelope": secretish})
    assert r.status_code == 422 and secretish not in r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "envelope"]]
    wrong_type = setup.client.post("/v1/enclave/provision", headers=setup.owners["A"],
                                   json={"session_id": b64(bytes(16)), "envelope": [secretish]})
    assert wrong_type.status_code == 422 and secretish not in wrong_type.text


@pytest.mark.parametrize("role", ["contributor", "predict"])
def test_other_roles_may_not_use_the_relay(setup: Setup, role: str) -> None:
    made = setup.client.post("/v1/tokens", json={"role": role}, headers=setup.owners["A"])
    token = bearer(made.json()["token"])
    calls = [("GET", "/v1/enclave", None),
             ("POST", "/v1/enclave/attest", {"nonce": b64(bytes(32)), "session_id": b64(bytes(16))}),
             ("POST", "/v1/enclave/provision", {"session_id": b64(bytes(16)), "envelope": b64(b"x")})]
    for method, path, body in calls:
        r = setup.client.request(method, path, headers=token, json=body)
        assert (r.status_code, r.json()) == (403, {"detail": "this token may not do that"}), path


def test_key_not_registered_by_this_tenant_is_a_conflict(setup: Setup, keys: Keys) -> None:
    unregistered = make_keys()
    r = _send(setup, "A", *_good_envelope(setup, "A", unregistered))
    assert (r.status_code, r.json()) == (409, NOT_REGISTERED)
    # Another tenant's registered key answers exactly the same (B would need A's secret).
    r = _send(setup, "B", *_good_envelope(setup, "B", keys))
    assert (r.status_code, r.json()) == (409, NOT_REGISTERED)


def test_a_tenant_cannot_use_another_tenants_session(setup: Setup, keys: Keys,
                                                     other_keys: Keys) -> None:
    session, envelope = _good_envelope(setup, "A", keys)
    stolen = _send(setup, "B", session, envelope)
    assert (stolen.status_code, stolen.json()) == (400, FAILED)
    taken = setup.client.post("/v1/enclave/attest", headers=setup.owners["B"],
                              json={"nonce": b64(bytes(32)), "session_id": b64(session)})
    assert taken.status_code == 409
    ok = _send(setup, "A", session, envelope)  # A's session was left untouched
    assert (ok.status_code, ok.json()) == (200, {"key_id": keys.secret.key_id})


def test_a_secret_key_under_another_tenants_key_id_is_refused(setup: Setup, keys: Keys,
                                                              other_keys: Keys) -> None:
    # B pairs A's public key (so A's key id) with B's secret key, to overwrite A's key.
    mine = keys.secret.backend.key_bytes(secret=True)
    theirs = other_keys.secret.backend.key_bytes(secret=True)
    forged = _pack("secret", keys.secret.params, keys.secret.key_id,
                   {"public_key": mine["public_key"], "secret_key": theirs["secret_key"]})
    provision(setup.link("A"), keys.secret, setup.policy(), quiet_simulation=True)
    sealed = setup.enclave.state_dir / "sealed-keys" / f"{keys.secret.key_id}.sealed"
    before = sealed.read_bytes()
    r = _send(setup, "B", *_envelope(setup.link("B"), setup, forged, keys.secret.key_id,
                                     keys.secret.params.digest()))
    assert (r.status_code, r.json()) == (400, FAILED)
    assert sealed.read_bytes() == before


def test_without_an_enclave_the_relay_is_unavailable(tmp_path: Path) -> None:
    settings = Settings(admin_token=ADMIN, data_dir=tmp_path / "data")
    with TestClient(create_app(settings, refiner=FakeRefiner())) as client:
        made = client.post("/v1/admin/tenants", json={"name": "x"}, headers=bearer(ADMIN))
        r = client.get("/v1/enclave", headers=bearer(made.json()["owner_token"]))
        assert r.status_code == 503



def test_one_tenants_sessions_never_evict_anothers(keys: Keys) -> None:
    """A tenant opening many sessions evicts only its own oldest."""
    from cipherloop.cloud.relay import Relay

    class Link:
        def attest(self, nonce: bytes, session_id: bytes) -> dict[str, object]:
            return {"session_id": session_id}

        def provision(self, session_id: bytes, envelope: bytes) -> str:
            return "key"

        def hello(self) -> dict[str, object]:
            return {}

    relay = Relay(Link(), per_tenant=2)  # type: ignore[arg-type]
    relay.attest(tenant_id="victim", nonce=bytes(32), session_id=b"v" * 16)
    for i in range(50):
        relay.attest(tenant_id="noisy", nonce=bytes(32), session_id=bytes([i]) * 16)
    assert relay.provision(tenant_id="victim", session_id=b"v" * 16, envelope=b"e") == "key"
    assert relay.provision(tenant_id="noisy", session_id=bytes([49]) * 16, envelope=b"e") == "key"
    with pytest.raises(ProvisioningFailed):  # its own oldest was evicted
        relay.provision(tenant_id="noisy", session_id=bytes([0]) * 16, envelope=b"e")
