"""Simulated (Nitro-format) evidence: each failed check raises its own error; success warns."""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from cipherloop.attest import SimulatedEvidenceWarning, VerifierPolicy, verify_evidence
from cipherloop.attest.nitro import AWS_NITRO_ROOT_PEM, AWS_NITRO_ROOT_SHA256, SIM_ROOT_CN
from cipherloop.enclave.platform.sim import SimPlatform
from cipherloop.errors import (
    AttestationError,
    CollateralExpired,
    DebugEnclaveRejected,
    EvidenceMalformed,
    EvidenceSignatureInvalid,
    MeasurementNotAllowed,
    SimulationNotAllowed,
    StaleEvidence,
    UntrustedRoot,
)

REPORT_DATA = bytes(range(64))


def _parts(evidence: bytes) -> list[bytes]:
    tagged = cbor2.loads(evidence)
    assert tagged.tag == 18
    protected, _unprotected, payload, signature = tagged.value
    return [protected, payload, signature]


def _cose(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))


def test_allowed_simulation_is_accepted_with_a_warning(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    evidence = sim.evidence(REPORT_DATA)

    with pytest.warns(SimulatedEvidenceWarning, match="NOT A TEE"):
        v = verify_evidence(evidence, sim_policy)

    assert v.simulated and v.platform == "sim"
    assert v.measurement == sim.measurement().hex()
    assert v.report_data == REPORT_DATA
    assert v.evidence_sha256 == hashlib.sha256(evidence).digest()
    assert not v.debug and v.tcb_status == "NotApplicable"


def test_the_warning_is_emitted_every_time(sim: SimPlatform, sim_policy: VerifierPolicy) -> None:
    evidence = sim.evidence(REPORT_DATA)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action: once per location
        for _ in range(3):
            verify_evidence(evidence, sim_policy)

    assert [w.category for w in caught] == [SimulatedEvidenceWarning] * 3


def test_simulation_not_allowed_is_refused_even_with_its_root_pinned(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    strict = VerifierPolicy(
        measurements=sim_policy.measurements, pinned_roots=[sim.root_certificate_pem()]
    )

    with pytest.raises(SimulationNotAllowed, match="SIMULATED"):
        verify_evidence(sim.evidence(REPORT_DATA), strict)


def test_default_policy_refuses_simulation(sim: SimPlatform) -> None:
    with pytest.raises(SimulationNotAllowed):
        verify_evidence(sim.evidence(REPORT_DATA), VerifierPolicy())


def test_tampered_signature_is_rejected(sim: SimPlatform, sim_policy: VerifierPolicy) -> None:
    protected, payload, signature = _parts(sim.evidence(REPORT_DATA))
    bad = signature[:-1] + bytes([signature[-1] ^ 0x01])

    with pytest.raises(EvidenceSignatureInvalid):
        verify_evidence(_cose(protected, payload, bad), sim_policy)


def test_tampered_payload_is_rejected(sim: SimPlatform, sim_policy: VerifierPolicy) -> None:
    protected, payload, signature = _parts(sim.evidence(REPORT_DATA))
    doc = cbor2.loads(payload)
    doc["user_data"] = bytes(64)

    with pytest.raises(EvidenceSignatureInvalid):
        verify_evidence(_cose(protected, cbor2.dumps(doc), signature), sim_policy)


def test_evidence_under_another_root_is_rejected(
    tmp_path: Path, sim_policy: VerifierPolicy
) -> None:
    stranger = SimPlatform(tmp_path / "other-machine")

    with pytest.raises(UntrustedRoot) as info:
        verify_evidence(stranger.evidence(REPORT_DATA), sim_policy)

    assert not isinstance(info.value, SimulationNotAllowed)


def test_pinned_root_in_front_of_a_foreign_leaf_is_rejected(
    tmp_path: Path, sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    stranger = SimPlatform(tmp_path / "other-machine")
    protected, payload, signature = _parts(stranger.evidence(REPORT_DATA))
    doc = cbor2.loads(payload)
    pinned = x509.load_pem_x509_certificate(sim.root_certificate_pem())
    doc["cabundle"] = [pinned.public_bytes(serialization.Encoding.DER)]

    with pytest.raises(UntrustedRoot, match="does not verify"):
        verify_evidence(_cose(protected, cbor2.dumps(doc), signature), sim_policy)


def test_measurement_not_on_the_allowlist_is_rejected(
    sim: SimPlatform, sim_policy: VerifierPolicy
) -> None:
    policy = VerifierPolicy(
        measurements={"00" * 47 + "01"},
        allow_simulated=True,
        pinned_roots=sim_policy.pinned_roots,
    )

    with pytest.raises(MeasurementNotAllowed, match="allowlist"):
        verify_evidence(sim.evidence(REPORT_DATA), policy)


def test_debug_enclave_is_rejected(tmp_path: Path, sim: SimPlatform) -> None:
    debug = SimPlatform(sim.state_dir, debug=True)
    policy = VerifierPolicy(
        measurements={sim.measurement().hex(), "00" * 48},
        allow_simulated=True,
        pinned_roots=[sim.root_certificate_pem()],
    )

    with pytest.raises(DebugEnclaveRejected):
        verify_evidence(debug.evidence(REPORT_DATA), policy)


@pytest.mark.parametrize("shift", [-3600.0, +3600.0])
def test_evidence_too_old_or_from_the_future_is_stale(
    sim: SimPlatform, sim_policy: VerifierPolicy, shift: float
) -> None:
    skewed = SimPlatform(sim.state_dir, clock=lambda: time.time() + shift)

    with pytest.raises(StaleEvidence):
        verify_evidence(skewed.evidence(REPORT_DATA), sim_policy)


def test_expired_certificates_are_rejected(tmp_path: Path) -> None:
    t0 = time.time()
    short = SimPlatform(tmp_path / "short", validity_days=1, clock=lambda: t0)
    later = t0 + 3 * 86400
    policy = VerifierPolicy(
        measurements={short.measurement().hex()},
        allow_simulated=True,
        pinned_roots=[short.root_certificate_pem()],
        now=later,
        max_evidence_age=10 * 86400,
    )

    with pytest.raises(CollateralExpired):
        verify_evidence(short.evidence(REPORT_DATA), policy)


@pytest.mark.parametrize(
    "evidence",
    [
        b"",
        b"\x84garbage",
        bytes(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""]))),
        bytes(cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7}), {}, b"", b""]))),
    ],
)
def test_malformed_evidence_is_rejected(sim_policy: VerifierPolicy, evidence: bytes) -> None:
    with pytest.raises(EvidenceMalformed):
        verify_evidence(evidence, sim_policy)


def test_every_failure_is_an_attestation_error() -> None:
    for cls in (SimulationNotAllowed, UntrustedRoot, StaleEvidence, EvidenceMalformed):
        assert issubclass(cls, AttestationError)


def test_sim_root_is_named_as_a_simulation(sim: SimPlatform) -> None:
    root = x509.load_pem_x509_certificate(sim.root_certificate_pem())

    assert root.subject.rfc4514_string().startswith(f"CN={SIM_ROOT_CN}")


def test_embedded_aws_root_matches_its_published_fingerprint() -> None:
    root = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_PEM)

    assert root.fingerprint(hashes.SHA256()).hex() == AWS_NITRO_ROOT_SHA256
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"


@pytest.mark.parametrize(
    "kwargs",
    [{"measurements": "abcd"}, {"measurements": ["not hex"]}, {"tcb_statuses": ["Revoked"]},
     {"max_evidence_age": -1}, {"allow_simulated": "yes"}, {"pinned_roots": [object()]}],
)
def test_malformed_policy_settings_raise_value_and_type_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        VerifierPolicy(**kwargs)  # type: ignore[arg-type]

    assert isinstance(info.value, TypeError)
    assert next(iter(kwargs)) in str(info.value)
