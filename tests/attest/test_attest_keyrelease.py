"""The provisioning protocol end to end: owner (attest) and enclave (provision) halves."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cipherloop.attest import (
    VerifierPolicy,
    describe,
    keyrelease,
    new_challenge,
    provision_enclave,
    verify_offer,
    wrap_key,
)
from cipherloop.ckks import SecretContext
from cipherloop.enclave import provision
from cipherloop.enclave.platform.sim import SimPlatform
from cipherloop.errors import (
    EvidenceMalformed,
    KeyMaterialError,
    ProvisioningFailed,
    ReplayedChallenge,
    ReportDataMismatch,
)

POLICY = {"release": ["promote_decision"], "max_queries_per_hour": 10}


@pytest.fixture(autouse=True)
def _quiet_simulation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        yield


def _wrap_for(
    sim: SimPlatform, policy: VerifierPolicy, key: SecretContext, **override: Any
) -> tuple[bytes, provision.ProvisionState, keyrelease.Challenge]:
    challenge = new_challenge()
    offer, state = provision.begin(sim, challenge.nonce, challenge.session_id)
    verified = verify_offer(offer.to_dict(), challenge, policy)
    args: dict[str, Any] = {
        "secret_key_bytes": key.export_secret(),
        "key_id": key.key_id,
        "params_digest": key.params.digest(),
        "policy": POLICY,
        "nonce": challenge.nonce,
        "session_id": challenge.session_id,
    }
    args.update(override)
    return wrap_key(verified, **args), state, challenge


def test_owner_provisions_a_verified_enclave(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    held: dict[str, Any] = {}

    def offer_getter(nonce: bytes, session_id: bytes) -> bytes:
        offer, held["state"] = provision.begin(sim, nonce, session_id)
        return offer.to_bytes()

    def sender(envelope: bytes) -> None:
        held["key"] = provision.accept(held["state"], envelope)

    verified = provision_enclave(
        offer_getter,
        sender,
        small_key.export_secret(),
        small_key.key_id,
        small_key.params.digest(),
        POLICY,
        sim_policy,
    )

    key: provision.ProvisionedKey = held["key"]
    assert key.secret_key_bytes == small_key.export_secret()
    assert (key.key_id, key.params_digest) == (small_key.key_id, small_key.params.digest())
    assert key.policy == POLICY
    assert SecretContext.load_secret(key.secret_key_bytes).key_id == small_key.key_id
    rows = dict(describe(verified))
    assert rows["simulated"].startswith("YES") and rows["debug"] == "off"
    assert rows["measurement"] == sim.measurement().hex()


def test_owner_refuses_to_send_a_key_with_a_wrong_key_id(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    sent: list[bytes] = []

    with pytest.raises(KeyMaterialError):
        provision_enclave(
            lambda n, s: provision.begin(sim, n, s)[0].to_dict(),
            sent.append,
            small_key.export_secret(),
            "0" * 32,
            small_key.params.digest(),
            POLICY,
            sim_policy,
        )
    assert sent == []


def test_a_challenge_answers_one_offer_only(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    challenge = new_challenge()
    offer, _ = provision.begin(sim, challenge.nonce, challenge.session_id)
    verify_offer(offer.to_dict(), challenge, sim_policy)

    with pytest.raises(ReplayedChallenge):
        verify_offer(offer.to_dict(), challenge, sim_policy)


def test_an_old_offer_replayed_to_a_new_challenge_is_rejected(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    old = new_challenge()
    offer, _ = provision.begin(sim, old.nonce, old.session_id)

    with pytest.raises(ReplayedChallenge, match="another session"):
        verify_offer(offer.to_dict(), new_challenge(), sim_policy)


def test_an_old_offer_relabelled_with_the_new_session_fails_the_binding(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    old, new = new_challenge(), new_challenge()
    offer, _ = provision.begin(sim, old.nonce, old.session_id)
    relabelled = offer.to_dict() | {"session_id": new.session_id}

    with pytest.raises(ReportDataMismatch):
        verify_offer(relabelled, new, sim_policy)


def test_report_data_bound_to_another_key_is_rejected(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    challenge = new_challenge()
    offer, _ = provision.begin(sim, challenge.nonce, challenge.session_id)
    host_key = X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    with pytest.raises(ReportDataMismatch):
        verify_offer(offer.to_dict() | {"public_key": host_key}, challenge, sim_policy)


def test_wrap_key_refuses_another_challenge(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    with pytest.raises(ReportDataMismatch):
        _wrap_for(sim, sim_policy, small_key, nonce=bytes(32))


def test_a_wrapped_key_opens_in_its_enclave_session_only_once(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    envelope, state, _ = _wrap_for(sim, sim_policy, small_key)

    provision.accept(state, envelope)
    with pytest.raises(ProvisioningFailed):
        provision.accept(state, envelope)


def test_another_enclave_instance_cannot_open_the_wrapped_key(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    envelope, _, challenge = _wrap_for(sim, sim_policy, small_key)
    # Same machine, same code, same challenge, but its own ephemeral key.
    _, other_state = provision.begin(sim, challenge.nonce, challenge.session_id)

    with pytest.raises(ProvisioningFailed):
        provision.accept(other_state, envelope)


def test_the_wrapped_key_is_bound_to_the_attested_evidence(
    tmp_path: Path, sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    envelope, state, challenge = _wrap_for(sim, sim_policy, small_key)
    # An enclave with another measurement that somehow held the same private key
    # still derives another HPKE context: the info binds SHA-256(evidence).
    changed = SimPlatform(sim.state_dir, measurement=bytes(range(48)))
    other_evidence = changed.evidence(bytes(64))
    private_key, _ = state._take()
    assert private_key is not None
    forged = provision.ProvisionState(
        private_key,
        provision.hpke_info(other_evidence, challenge.nonce, challenge.session_id),
        challenge.session_id,
    )

    with pytest.raises(ProvisioningFailed):
        provision.accept(forged, envelope)


@pytest.mark.parametrize("field", ["key_id", "params_digest"])
def test_enclave_refuses_a_key_whose_id_or_params_do_not_match(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext, field: str
) -> None:
    envelope, state, _ = _wrap_for(sim, sim_policy, small_key, **{field: "f" * 32})

    with pytest.raises(ProvisioningFailed):
        provision.accept(state, envelope)


def test_tampered_envelope_is_refused(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    envelope, state, _ = _wrap_for(sim, sim_policy, small_key)
    outer = cbor2.loads(envelope)
    outer["hpke"] = outer["hpke"][:-1] + bytes([outer["hpke"][-1] ^ 1])

    with pytest.raises(ProvisioningFailed):
        provision.accept(state, cbor2.dumps(outer))


def test_both_halves_agree_on_the_protocol_bytes() -> None:
    pk, nonce, sid = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 80))
    evidence = b"some evidence"

    assert provision.PROTOCOL == keyrelease.PROTOCOL
    assert (provision.NONCE_BYTES, provision.SESSION_ID_BYTES) == (
        keyrelease.NONCE_BYTES,
        keyrelease.SESSION_ID_BYTES,
    )
    assert provision.report_data_for(pk, nonce, sid) == keyrelease.expected_report_data(
        pk, nonce, sid
    )
    assert provision.hpke_info(evidence, nonce, sid) == keyrelease.hpke_info(
        hashlib.sha256(evidence).digest(), nonce, sid
    )


def test_offer_round_trips_through_both_wire_forms(sim: SimPlatform) -> None:
    challenge = new_challenge()
    offer, _ = provision.begin(sim, challenge.nonce, challenge.session_id)

    assert provision.Offer.from_bytes(offer.to_bytes()) == offer
    parsed = keyrelease.parse_offer(offer.to_bytes())
    assert (parsed.platform, parsed.evidence, parsed.public_key, parsed.session_id) == (
        offer.platform,
        offer.evidence,
        offer.public_key,
        offer.session_id,
    )


def _windows(secret: bytes) -> list[str]:
    """Recognisable renderings of a secret: hex and Python-repr slices from its middle."""
    mid = len(secret) // 2
    chunk = secret[mid : mid + 24]
    return [chunk.hex(), repr(chunk)[2:-1], secret[:24].hex()]


def test_no_secret_reaches_logs_reprs_or_exception_text(
    tmp_path: Path,
    sim: SimPlatform,
    sim_policy: VerifierPolicy,
    small_key: SecretContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = small_key.export_secret()
    envelope, state, _ = _wrap_for(sim, sim_policy, small_key)
    texts: list[str] = [repr(state)]
    key = provision.accept(state, envelope)
    texts += [repr(key), str(key)]
    sealed_path = tmp_path / "sealed.key"
    provision.store_sealed(sim, sealed_path, key)
    sealed = sealed_path.read_bytes()
    changed = SimPlatform(sim.state_dir, measurement=bytes(48))
    attempts: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: provision.accept(state, envelope), ProvisioningFailed),  # spent state
        (lambda: provision.load_sealed(changed, sealed_path), KeyMaterialError),  # other measurement
        (lambda: provision.accept(_wrap_for(sim, sim_policy, small_key)[1], envelope),
         ProvisioningFailed),  # another session's key
    ]
    for attempt, kind in attempts:
        with pytest.raises(kind) as info:
            attempt()
        assert type(info.value) is kind
        texts += [str(info.value), repr(info.value)]
        assert info.value.__cause__ is None

    haystack = "\n".join([*texts, caplog.text])
    for secret_bytes in (secret, envelope, sealed):
        for needle in _windows(secret_bytes):
            assert needle not in haystack


def test_a_malformed_offer_still_uses_up_the_challenge(sim_policy: VerifierPolicy) -> None:
    challenge = new_challenge()

    with pytest.raises(EvidenceMalformed):
        verify_offer(b"not an offer", challenge, sim_policy)

    assert challenge.used


@pytest.mark.parametrize("label", ["cipherloop-prov/v2", "cipherloop-prov/v0", "zzz", ""])
def test_an_envelope_under_another_format_label_is_refused(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext, label: str
) -> None:
    envelope, state, _ = _wrap_for(sim, sim_policy, small_key)
    outer = cbor2.loads(envelope)
    outer["format"] = label  # the sealed payload itself is intact
    with pytest.raises(ProvisioningFailed):
        provision.accept(state, cbor2.dumps(outer))


def test_a_policy_with_a_non_text_key_is_refused(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    challenge = new_challenge()
    offer, state = provision.begin(sim, challenge.nonce, challenge.session_id)
    verified = verify_offer(offer.to_dict(), challenge, sim_policy)
    envelope = wrap_key(verified, secret_key_bytes=small_key.export_secret(), key_id=small_key.key_id,
                        params_digest=small_key.params.digest(), policy={"min_samples": 3, 7: "x"},
                        nonce=challenge.nonce, session_id=challenge.session_id)
    with pytest.raises(ProvisioningFailed):
        provision.accept(state, envelope)


def test_state_repr_says_whether_it_was_used(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    envelope, state, challenge = _wrap_for(sim, sim_policy, small_key)
    assert repr(state) == f"ProvisionState(session_id={challenge.session_id.hex()!r}, used=False)"
    provision.accept(state, envelope)
    assert repr(state) == f"ProvisionState(session_id={challenge.session_id.hex()!r}, used=True)"


def test_offer_and_provisioned_key_are_immutable(
    sim: SimPlatform, sim_policy: VerifierPolicy, small_key: SecretContext
) -> None:
    envelope, state, challenge = _wrap_for(sim, sim_policy, small_key)
    offer, _ = provision.begin(sim, challenge.nonce, bytes(16))
    key = provision.accept(state, envelope)
    for obj, name in ((offer, "public_key"), (key, "key_id")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, b"x")


@pytest.mark.parametrize("drop", ["platform", "evidence", "public_key", "session_id"])
def test_an_offer_missing_a_field_is_malformed(sim: SimPlatform, drop: str) -> None:
    offer, _ = provision.begin(sim, bytes(32), bytes(16))
    doc = offer.to_dict()
    del doc[drop]
    with pytest.raises(EvidenceMalformed, match="missing a field"):
        provision.Offer.from_dict(doc)
    with pytest.raises(EvidenceMalformed, match="missing a field"):
        provision.Offer.from_bytes(cbor2.dumps(doc))


def _raw_envelope(sim: SimPlatform, body: dict[str, Any]) -> tuple[bytes, provision.ProvisionState]:
    """An envelope sealed exactly as the owner would, around a payload the test chooses."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    nonce, session_id = bytes(range(32)), bytes(range(16))
    offer, state = provision.begin(sim, nonce, session_id)
    info = provision.hpke_info(offer.evidence, nonce, session_id)
    sealed = provision._SUITE.encrypt(cbor2.dumps(body), X25519PublicKey.from_public_bytes(
        offer.public_key), info=info)
    return cbor2.dumps({"format": "cipherloop-prov/v1", "hpke": sealed}), state


def _body(key: SecretContext, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"secret_key": key.export_secret(), "key_id": key.key_id,
                            "params_digest": key.params.digest(), "policy": {"min_samples": 3}}
    body.update(changes)
    return body


def test_a_hand_made_envelope_opens(sim: SimPlatform, small_key: SecretContext) -> None:
    envelope, state = _raw_envelope(sim, _body(small_key))
    key = provision.accept(state, envelope)
    assert (key.key_id, key.policy) == (small_key.key_id, {"min_samples": 3})


@pytest.mark.parametrize("changes", [
    {"policy": ["ab", "cd"]},          # a list that dict() would turn into a map
    {"policy": "ab"},
    {"policy": {"min_samples": 3, 7: "x"}},
    {"key_id": 7},
    {"params_digest": b"digest"},
    {"secret_key": "text"},
])
def test_a_payload_of_the_wrong_types_is_refused(sim: SimPlatform, small_key: SecretContext,
                                                 changes: dict[str, Any]) -> None:
    envelope, state = _raw_envelope(sim, _body(small_key, **changes))
    with pytest.raises(ProvisioningFailed):
        provision.accept(state, envelope)


def test_provisioned_keys_never_compare_their_secrets(small_key: SecretContext) -> None:
    # eq=False: no generated __eq__ that would compare key bytes (and not in constant time).
    a = provision.ProvisionedKey(small_key.export_secret(), small_key.key_id, "d", {})
    b = provision.ProvisionedKey(small_key.export_secret(), small_key.key_id, "d", {})
    assert a != b and a == a


def test_offer_repr_leaves_out_evidence_and_collateral(sim: SimPlatform) -> None:
    offer, _ = provision.begin(sim, bytes(32), bytes(16))
    text = repr(dataclasses.replace(offer, collateral="COLLATERAL-JSON"))
    assert "evidence" not in text and "collateral" not in text and "COLLATERAL" not in text
    assert "public_key" in text


@pytest.mark.parametrize("data", ["a text, not bytes", 12, None])
def test_an_offer_that_is_not_bytes_is_malformed(data: Any) -> None:
    with pytest.raises(EvidenceMalformed):
        provision.Offer.from_bytes(data)


@pytest.mark.parametrize("field", ["evidence", "public_key", "session_id"])
def test_an_offer_field_of_the_wrong_type_is_malformed(sim: SimPlatform, field: str) -> None:
    offer, _ = provision.begin(sim, bytes(32), bytes(16))
    for bad in ("text", -1, [1.5], 12):  # an int n is no byte string (bytes(n) is n zeros)
        doc = {**offer.to_dict(), field: bad}
        with pytest.raises(EvidenceMalformed, match="missing a field or has a wrong type"):
            provision.Offer.from_dict(doc)


@pytest.mark.parametrize(("field", "value"), [("evidence", 12), ("public_key", 32),
                                              ("session_id", "0" * 16), ("platform", b"sim"),
                                              ("collateral", b"{}")])
def test_an_offer_field_given_another_type_is_malformed(sim: SimPlatform, field: str,
                                                        value: object) -> None:
    """bytes(12) is twelve zero bytes: an int must not pass for a byte string."""
    offer, _ = provision.begin(sim, bytes(32), bytes(16))
    doc = {**offer.to_dict(), field: value}
    with pytest.raises(EvidenceMalformed):
        provision.Offer.from_dict(doc)
