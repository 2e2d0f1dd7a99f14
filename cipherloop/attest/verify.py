"""Evidence verification: recognise the format, authenticate it, apply the owner's policy.

Runs in: owner.

:func:`verify_evidence` is the one entry point. It sniffs the evidence type
(COSE_Sign1 → Nitro format, which the simulated TEE also uses; a DCAP quote
header → SGX/TDX), lets the platform module authenticate it, and then
applies the checks common to every platform, in this order:

1. freshness of the evidence timestamp, where the format has one
   (:class:`~cipherloop.errors.StaleEvidence`);
2. debug mode (:class:`~cipherloop.errors.DebugEnclaveRejected`);
3. the measurement allowlist (:class:`~cipherloop.errors.MeasurementNotAllowed`);
4. for simulated evidence that the policy allows: a
   :class:`SimulatedEvidenceWarning`, every time.

Binding the report data to the enclave's key and the owner's challenge is
the job of :func:`cipherloop.attest.keyrelease.verify_offer`.
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    DebugEnclaveRejected,
    EvidenceMalformed,
    MeasurementNotAllowed,
    StaleEvidence,
)
from .evidence import SimulatedEvidenceWarning, VerifiedEvidence, warn_simulated
from .policy import VerifierPolicy

__all__ = ["SimulatedEvidenceWarning", "VerifiedEvidence", "evidence_kind", "verify_evidence"]

_COSE_SIGN1_TAG = b"\xd2"  # CBOR tag 18
_CBOR_ARRAY_4 = b"\x84"
_DCAP_VERSIONS = (3, 4, 5)
_DCAP_KEY_TYPES = (2, 3)  # ECDSA-256-with-P-256, ECDSA-384-with-P-384


def evidence_kind(evidence: bytes) -> str:
    """``"nitro"`` (COSE_Sign1, also the sim's format) or ``"dcap"`` (SGX/TDX quote).

    Raises
    ------
    EvidenceMalformed
        If the bytes look like neither.

    Examples
    --------
    >>> evidence_kind(bytes.fromhex("d28440a04040"))
    'nitro'
    """
    if not isinstance(evidence, bytes):
        raise TypeError("evidence must be bytes")
    if evidence[:1] == _CBOR_ARRAY_4 or evidence[:2] == _COSE_SIGN1_TAG + _CBOR_ARRAY_4:
        return "nitro"
    if len(evidence) >= 48:
        version = int.from_bytes(evidence[0:2], "little")
        key_type = int.from_bytes(evidence[2:4], "little")
        if version in _DCAP_VERSIONS and key_type in _DCAP_KEY_TYPES:
            return "dcap"
    raise EvidenceMalformed("evidence is neither a COSE_Sign1 document nor a DCAP quote")


def _apply_policy(verified: VerifiedEvidence, policy: VerifierPolicy) -> VerifiedEvidence:
    if verified.issued_at is not None:
        age = policy.current_time() - verified.issued_at
        if age > policy.max_evidence_age:
            raise StaleEvidence("evidence is older than the policy's max_evidence_age")
        if age < -policy.max_clock_skew:
            raise StaleEvidence("evidence timestamp lies in the future")
    if verified.debug:
        raise DebugEnclaveRejected("the enclave runs in debug mode")
    if verified.measurement not in policy.measurements:
        raise MeasurementNotAllowed(
            f"{verified.platform} measurement {verified.measurement} is not on the allowlist"
        )
    if verified.simulated:
        warn_simulated(
            "accepted evidence from the SIMULATED TEE: NOT A TEE, the host can read the key",
            stacklevel=3,
        )
    return verified


def verify_evidence(
    evidence: bytes, policy: VerifierPolicy, *, collateral: Any = None
) -> VerifiedEvidence:
    """Verify enclave evidence of any supported type against the owner's policy.

    Parameters
    ----------
    evidence : bytes
        A Nitro (or simulated) attestation document, or a DCAP quote.
    policy : VerifierPolicy
        What the owner accepts.
    collateral : str, bytes, mapping or dcap_qvl.QuoteCollateralV3, optional
        Required for DCAP quotes; ignored otherwise.

    Returns
    -------
    VerifiedEvidence
        Never ``debug``; ``simulated`` only if the policy allows simulation.

    Raises
    ------
    AttestationError
        One of its specific subclasses, naming the check that failed:
        ``EvidenceMalformed``, ``EvidenceSignatureInvalid``,
        ``UntrustedRoot``, ``SimulationNotAllowed``, ``CollateralExpired``,
        ``TcbStatusRejected``, ``StaleEvidence``, ``DebugEnclaveRejected``,
        ``MeasurementNotAllowed``.

    Warns
    -----
    SimulatedEvidenceWarning
        Each time simulated evidence is accepted.
    """
    kind = evidence_kind(evidence)
    if kind == "nitro":
        from .nitro import authenticate_document

        verified = authenticate_document(evidence, policy)
    else:
        if collateral is None:
            raise EvidenceMalformed("DCAP quotes need their collateral to be verified")
        from .dcap import authenticate_quote

        verified = authenticate_quote(evidence, collateral, policy)
    return _apply_policy(verified, policy)
